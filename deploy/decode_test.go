package deploy

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// objects is one rendering of a kustomization, every object decoded into
// its API type.
type objects struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	configMaps  []*corev1.ConfigMap
	secrets     []*corev1.Secret
	namespaces  []*corev1.Namespace
	pdbs        []*policyv1.PodDisruptionBudget
	netpols     []*networkingv1.NetworkPolicy
	meta        []metav1.Object
}

// render builds the kustomization in dir as `kustomize build dir` does and
// decodes every object strictly; a problem with any object fails the test.
func render(t *testing.T, dir string) *objects {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	o := new(objects)
	for _, r := range m.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s %s: %v", dir, r.GetKind(), r.GetName(), err)
		}
		if err := o.add(doc); err != nil {
			t.Errorf("%s: %s %s: %v", dir, r.GetKind(), r.GetName(), err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return o
}

// add decodes one manifest into the API type its apiVersion and kind name.
// A kind with no case here is an error, so nothing reaches the cluster
// unvalidated.
func (o *objects) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	switch gvk := tm.APIVersion + " " + tm.Kind; gvk {
	case "apps/v1 Deployment":
		return decodeInto(doc, &o.deployments, &o.meta)
	case "v1 Service":
		return decodeInto(doc, &o.services, &o.meta)
	case "v1 ConfigMap":
		return decodeInto(doc, &o.configMaps, &o.meta)
	case "v1 Secret":
		return decodeInto(doc, &o.secrets, &o.meta)
	case "v1 Namespace":
		return decodeInto(doc, &o.namespaces, &o.meta)
	case "policy/v1 PodDisruptionBudget":
		return decodeInto(doc, &o.pdbs, &o.meta)
	case "networking.k8s.io/v1 NetworkPolicy":
		return decodeInto(doc, &o.netpols, &o.meta)
	default:
		return fmt.Errorf("%s: no API type to validate it against: add it to objects.add", gvk)
	}
}

// decodeInto decodes doc strictly into a new T, checks its name, and
// appends it to list and to all.
func decodeInto[T any, PT interface {
	*T
	metav1.Object
}](doc []byte, list *[]PT, all *[]metav1.Object) error {
	v := PT(new(T))
	if err := decodeStrict(doc, v); err != nil {
		return err
	}
	if errs := validation.IsDNS1123Subdomain(v.GetName()); len(errs) > 0 {
		return fmt.Errorf("metadata.name %q: %s", v.GetName(), strings.Join(errs, "; "))
	}
	*list = append(*list, v)
	*all = append(*all, v)
	return nil
}

// decodeStrict decodes a YAML manifest into v as the API server's strict
// field validation (kubectl's default) would: duplicate keys, unknown
// fields and fields in the wrong case are errors. (encoding/json alone
// would match field names case-insensitively.)
func decodeStrict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// readFile returns the file's content, failing the test if it cannot.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDecodeStrict proves the decoder the manifests go through refuses
// what the API server would.
func TestDecodeStrict(t *testing.T) {
	t.Parallel()
	const head = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n"
	for _, tc := range []struct {
		name, doc string
		wantErr   bool
	}{
		{"valid", head + "  replicas: 2\n", false},
		{"unknown field", head + "  replica: 2\n", true},
		{"wrong case", head + "  Replicas: 2\n", true},
		{"nested unknown field", head + "  template:\n    spec:\n      containers:\n        - name: c\n          readOnlyRootFS: true\n", true},
		{"duplicate key", head + "  replicas: 2\n  replicas: 3\n", true},
		{"wrong type", head + "  replicas: two\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := decodeStrict([]byte(tc.doc), new(appsv1.Deployment))
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Errorf("decodeStrict: got error %v, want error: %v", err, tc.wantErr)
			}
		})
	}
	t.Run("unknown kind", func(t *testing.T) {
		t.Parallel()
		err := new(objects).add([]byte("apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: x\n"))
		if err == nil {
			t.Error("add(Job): got nil, want an error naming the kind nobody validates")
		}
	})
}
