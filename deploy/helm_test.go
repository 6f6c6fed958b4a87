package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"maps"
	"math/big"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const (
	chartDir           = "helm/tokenvend"
	chartSecretExample = "helm/tokenvend/examples/secrets.yaml"
	tlsVolume          = "tls"
)

// renderChart renders the chart as `helm template tokenvend deploy/helm/tokenvend
// -n tokenvend -f values.yaml` does, offline: the chart's values under
// valuesYAML, checked against values.schema.json, with the templates in
// strict mode (a reference to a value that does not exist is an error).
// Every object is decoded strictly into its Kubernetes type.
func renderChart(t *testing.T, valuesYAML string) (*objects, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load %s: %v", chartDir, err)
	}
	vals, err := chartutil.ReadValues([]byte(valuesYAML))
	if err != nil {
		t.Fatalf("values %q: %v", valuesYAML, err)
	}
	top, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{
		Name: "tokenvend", Namespace: namespace, Revision: 1, IsInstall: true,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Engine{Strict: true}.Render(ch, top)
	if err != nil {
		return nil, err
	}
	o := new(objects)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if !strings.HasSuffix(name, ".yaml") {
			continue // NOTES.txt, _helpers.tpl
		}
		for _, doc := range releaseutil.SplitManifests(files[name]) {
			if isEmptyYAML(doc) {
				continue // a template switched off by its values
			}
			if err := o.add([]byte(doc)); err != nil {
				t.Errorf("%s: %v\n%s", name, err, doc)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, m := range o.meta {
		if m.GetNamespace() != namespace {
			t.Errorf("%s: namespace %q, want the release's %q", m.GetName(), m.GetNamespace(), namespace)
		}
	}
	return o, nil
}

// isEmptyYAML reports whether a document holds only comments and space.
func isEmptyYAML(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// mustRender renders the chart, failing the test on any error.
func mustRender(t *testing.T, valuesYAML string) *objects {
	t.Helper()
	o, err := renderChart(t, valuesYAML)
	if err != nil {
		t.Fatalf("render %s with %q: %v", chartDir, valuesYAML, err)
	}
	return o
}

// chartPod is the rendered Deployment's pod, as the kustomize checks see it
// (pod), with the TLS Secret's volume when the transport is tls.
type chartPod struct {
	*pod
}

// chartWorkload is the base's workload, with the chart's example Secret.
func chartWorkload(t *testing.T, o *objects) *chartPod {
	t.Helper()
	return &chartPod{pod: workload(t, o, chartSecretExample)}
}

// chartConfig is the part of the rendered config the transport checks read.
type chartConfig struct {
	Server struct {
		TLS *struct {
			Cert     string `json:"cert"`
			Key      string `json:"key"`
			ClientCA string `json:"client_ca"`
		} `json:"tls"`
		TLSTerminatedByMesh bool `json:"tls_terminated_by_mesh"`
	} `json:"server"`
}

func (w *chartPod) parsedConfig(t *testing.T) (typed chartConfig, generic map[string]any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(w.configText), &typed); err != nil {
		t.Fatalf("%s: %v", configKey, err)
	}
	if err := yaml.Unmarshal([]byte(w.configText), &generic); err != nil {
		t.Fatalf("%s: %v", configKey, err)
	}
	return typed, generic
}

// TestHelmChart renders the chart in each transport mode and holds it to
// what the kustomize base promises (the same checks), plus what each mode
// needs.
func TestHelmChart(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"tls", "mesh"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			o := mustRender(t, "transport: "+mode)
			for kind, n := range map[string]int{
				"Deployment": len(o.deployments), "Service": len(o.services), "ConfigMap": len(o.configMaps),
				"PodDisruptionBudget": len(o.pdbs), "NetworkPolicy": len(o.netpols),
			} {
				if n != 1 {
					t.Fatalf("%s objects: got %d, want 1", kind, n)
				}
			}
			// Secrets are referenced, never rendered: an upgrade would
			// overwrite the real ones.
			if len(o.secrets) != 0 {
				t.Errorf("Secrets rendered: got %d, want 0", len(o.secrets))
			}
			w := chartWorkload(t, o)
			t.Run("Deployment", func(t *testing.T) { checkDeployment(t, w.pod) })
			t.Run("config", func(t *testing.T) { checkConfig(t, w.pod) })
			t.Run("Service", func(t *testing.T) { checkService(t, w.pod, o) })
			t.Run("PodDisruptionBudget", func(t *testing.T) { checkPDB(t, w.pod, o) })
			t.Run("NetworkPolicy", func(t *testing.T) { checkNetworkPolicy(t, w.pod, o) })
			t.Run("transport", func(t *testing.T) {
				t.Parallel()
				if mode == "tls" {
					checkChartTLS(t, w, false)
				} else {
					checkMesh(t, w)
				}
			})
			if got := w.d.Spec.Template.Annotations["checksum/config"]; len(got) != 64 {
				t.Errorf("pod annotation checksum/config: got %q, want the config's SHA-256, so a change rolls the pods", got)
			}
		})
	}
}

// checkChartTLS checks the tls mode: the config serves TLS from the mounted
// kubernetes.io/tls Secret, which rotates in place.
func checkChartTLS(t *testing.T, w *chartPod, clientCA bool) {
	t.Helper()
	cfg, _ := w.parsedConfig(t)
	if w.tls == nil {
		t.Fatal("tls volume: missing")
	}
	if w.tls.SecretName != "tokenvend-tls" {
		t.Errorf("tls volume: Secret %q, want the values' tls.secretName tokenvend-tls", w.tls.SecretName)
	}
	if w.tlsMount.SubPath != "" || !w.tlsMount.ReadOnly {
		t.Errorf("tls mount: subPath %q readOnly %v, want a read-only directory mount (cert-manager renews in place)", w.tlsMount.SubPath, w.tlsMount.ReadOnly)
	}
	if m := w.tls.DefaultMode; m == nil || *m&0o007 != 0 {
		t.Errorf("tls defaultMode: got %o, want no access for others", deref(m))
	}
	if strings.HasPrefix(w.tlsMount.MountPath+"/", w.configMount.MountPath+"/") {
		t.Errorf("tls mount %s: inside the config's read-only mount %s", w.tlsMount.MountPath, w.configMount.MountPath)
	}
	want := map[string]string{"cert": "tls.crt", "key": "tls.key"}
	if clientCA {
		want["client_ca"] = "ca.crt"
	}
	got := map[string]string{}
	if tls := cfg.Server.TLS; tls != nil {
		for k, v := range map[string]string{"cert": tls.Cert, "key": tls.Key, "client_ca": tls.ClientCA} {
			if v != "" {
				got[k] = v
			}
		}
	}
	for k, file := range want {
		if got[k] != path.Join(w.tlsMount.MountPath, file) {
			t.Errorf("server.tls.%s: got %q, want %s in the tls mount", k, got[k], file)
		}
	}
	if len(got) != len(want) {
		t.Errorf("server.tls: got %v, want exactly %v", got, want)
	}
	if cfg.Server.TLSTerminatedByMesh {
		t.Error("server.tls_terminated_by_mesh: want it unset in tls mode")
	}
	if got := w.d.Spec.Template.Annotations["prometheus.io/scheme"]; got != "https" {
		t.Errorf("pod annotation prometheus.io/scheme: got %q, want https", got)
	}
}

// checkMesh checks the mesh mode: no TLS of tokenvend's own, the mesh's
// identities trusted, and the kubelet's gRPC probes.
func checkMesh(t *testing.T, w *chartPod) {
	t.Helper()
	cfg, _ := w.parsedConfig(t)
	if !cfg.Server.TLSTerminatedByMesh || cfg.Server.TLS != nil || w.tls != nil {
		t.Errorf("mesh: got server.tls_terminated_by_mesh %v, server.tls %v, tls volume %v; want true, none, none",
			cfg.Server.TLSTerminatedByMesh, cfg.Server.TLS, w.tls)
	}
	if got := w.d.Spec.Template.Annotations["prometheus.io/scheme"]; got != "http" {
		t.Errorf("pod annotation prometheus.io/scheme: got %q, want http", got)
	}
}

// TestHelmValues renders the chart with the values an operator changes and
// checks each lands where it should, and that bad values are refused.
func TestHelmValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, values string
		wantErr      string // a substring of the render error
		check        func(t *testing.T, o *objects, w *chartPod)
	}{
		{name: "three replicas", values: "replicaCount: 3", check: func(t *testing.T, o *objects, w *chartPod) {
			if got := deref(w.d.Spec.Replicas); got != 3 || len(o.pdbs) != 1 {
				t.Errorf("replicas %d, PodDisruptionBudgets %d: want 3 and 1", got, len(o.pdbs))
			}
		}},
		{name: "one replica has no PodDisruptionBudget", values: "replicaCount: 1", check: func(t *testing.T, o *objects, w *chartPod) {
			// maxUnavailable 1 of 1 would let a drain take every pod.
			if got := deref(w.d.Spec.Replicas); got != 1 || len(o.pdbs) != 0 {
				t.Errorf("replicas %d, PodDisruptionBudgets %d: want 1 and 0", got, len(o.pdbs))
			}
		}},
		{name: "memory 1Gi", values: "resources: {requests: {cpu: 50m, memory: 512Mi}, limits: {cpu: 1, memory: 1Gi}}", check: func(t *testing.T, _ *objects, w *chartPod) {
			if got := env(w.c, "GOMEMLIMIT"); got != "819MiB" {
				t.Errorf("GOMEMLIMIT: got %q, want 819MiB (80%% of 1Gi)", got)
			}
			t.Run("Deployment", func(t *testing.T) { checkDeployment(t, w.pod) }) // the GOMEMLIMIT rule, among the rest
		}},
		{name: "memory in decimal units", values: "goMemLimitPercent: 90\nresources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: 1, memory: 500M}}", check: func(t *testing.T, _ *objects, w *chartPod) {
			if got := env(w.c, "GOMEMLIMIT"); got != "429MiB" {
				t.Errorf("GOMEMLIMIT: got %q, want 429MiB (90%% of 500M)", got)
			}
			t.Run("Deployment", func(t *testing.T) { checkDeployment(t, w.pod) })
		}},
		{name: "GOMEMLIMIT too close to the limit", values: "goMemLimitPercent: 95", wantErr: "goMemLimitPercent"},
		{name: "memory limit unreadable", values: "resources: {limits: {memory: lots}}", wantErr: "resources.limits.memory"},
		{name: "no memory limit", values: "resources: {limits: {memory: null}}", wantErr: "memory"},
		{name: "plaintext refused", values: "transport: plaintext", wantErr: "transport"},
		{name: "unknown value refused", values: "replicas: 3", wantErr: "replicas"},
		{name: "mutual TLS", values: "tls: {secretName: tokenvend-tls, clientCA: true}", check: func(t *testing.T, _ *objects, w *chartPod) {
			checkChartTLS(t, w, true)
		}},
		{name: "store, cache, callers and providers verbatim", values: `
store:
  redis: {addrs: ["redis-0.redis:6379"], password: {file: /var/run/secrets/tokenvend/redis-password}}
  encryption_keys: [{id: "2026-12", key: {file: /var/run/secrets/tokenvend/store-key}}]
cache: {reject_backoff: 2m}
providers:
  - {name: ledger, kind: insly, base_url: "https://ledger.example.com", client_secret: {file: /var/run/secrets/tokenvend/ledger}}
callers:
  - {id: "spiffe://cluster.local/ns/billing/sa/billing", allow: [{provider: ledger, scopes: ["*"]}]}
`, check: func(t *testing.T, _ *objects, w *chartPod) {
			_, cfg := w.parsedConfig(t)
			want := map[string]any{
				"store": map[string]any{
					"redis":           map[string]any{"addrs": []any{"redis-0.redis:6379"}, "password": map[string]any{"file": "/var/run/secrets/tokenvend/redis-password"}},
					"encryption_keys": []any{map[string]any{"id": "2026-12", "key": map[string]any{"file": "/var/run/secrets/tokenvend/store-key"}}},
				},
				"cache":     map[string]any{"reject_backoff": "2m"},
				"providers": []any{map[string]any{"name": "ledger", "kind": "insly", "base_url": "https://ledger.example.com", "client_secret": map[string]any{"file": "/var/run/secrets/tokenvend/ledger"}}},
				"callers":   []any{map[string]any{"id": "spiffe://cluster.local/ns/billing/sa/billing", "allow": []any{map[string]any{"provider": "ledger", "scopes": []any{"*"}}}}},
			}
			for k, v := range want {
				if !reflect.DeepEqual(cfg[k], v) {
					t.Errorf("config %s: got %v, want %v", k, cfg[k], v)
				}
			}
		}},
		{name: "config merged over", values: "config: {server: {allowed_hosts: [tokenvend.example.com]}}", check: func(t *testing.T, _ *objects, w *chartPod) {
			_, cfg := w.parsedConfig(t)
			server, _ := cfg["server"].(map[string]any)
			if !reflect.DeepEqual(server["allowed_hosts"], []any{"tokenvend.example.com"}) || server["grpc_addr"] != "0.0.0.0:9090" {
				t.Errorf("server: got %v, want allowed_hosts added to the chart's keys", server)
			}
		}},
		{name: "secrets by reference", values: "secrets: {name: vault-synced}", check: func(t *testing.T, o *objects, w *chartPod) {
			if w.secret.SecretName != "vault-synced" || len(o.secrets) != 0 {
				t.Errorf("secret volume %q, Secrets rendered %d: want vault-synced mounted and none rendered", w.secret.SecretName, len(o.secrets))
			}
		}},
		{name: "image by digest", values: "image: {repository: registry.example.com/tokenvend, digest: sha256:" + strings.Repeat("ab", 32) + "}", check: func(t *testing.T, _ *objects, w *chartPod) {
			if want := "registry.example.com/tokenvend@sha256:" + strings.Repeat("ab", 32); w.c.Image != want {
				t.Errorf("image: got %q, want %q", w.c.Image, want)
			}
		}},
		{name: "image tag defaults to the appVersion", values: "", check: func(t *testing.T, _ *objects, w *chartPod) {
			if w.c.Image != "registry.example.com/tokenvend:0.1.0" {
				t.Errorf("image: got %q, want registry.example.com/tokenvend:0.1.0", w.c.Image)
			}
		}},
		{name: "a scraper let in", values: `
networkPolicy:
  extraIngress:
    - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
      ports: [{port: http, protocol: TCP}]
`, check: func(t *testing.T, o *objects, _ *chartPod) {
			in := o.netpols[0].Spec.Ingress
			if len(in) != 2 || in[1].From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" || *in[1].Ports[0].Port != intstr.FromString("http") {
				t.Errorf("ingress: got %+v, want the callers' rule and the scraper's", in)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o, err := renderChart(t, tc.values)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("render: got %v, want an error naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			tc.check(t, o, chartWorkload(t, o))
		})
	}
}

func env(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// TestHelmConfigPassesCheck runs `tokenvend check` on the config the chart
// renders, as TestExampleConfigPassesCheck does for the kustomize overlay:
// the mounted Secrets are stood in for by directories (placeholder secret
// files, and a real certificate and key for TLS) and the mount paths in the
// text rewritten to them.
func TestHelmConfigPassesCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := buildTokenvend(t, dir)
	for _, tc := range []struct{ name, values string }{
		{"default", ""},
		{"mutual TLS", "tls: {secretName: tokenvend-tls, clientCA: true}"},
		{"mesh", "transport: mesh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := chartWorkload(t, mustRender(t, tc.values))
			dir := t.TempDir()
			text := w.configText
			mounts := map[string]map[string][]byte{w.secretMount.MountPath: {}}
			for key, value := range w.exampleSecretKeys {
				mounts[w.secretMount.MountPath][key] = []byte(value)
			}
			if w.tls != nil {
				mounts[w.tlsMount.MountPath] = selfSignedTLS(t)
			}
			for i, mount := range slices.Sorted(maps.Keys(mounts)) {
				local := filepath.Join(dir, "mount"+string(rune('0'+i)))
				if err := os.Mkdir(local, 0o700); err != nil {
					t.Fatal(err)
				}
				for key, b := range mounts[mount] {
					if err := os.WriteFile(filepath.Join(local, key), b, 0o600); err != nil {
						t.Fatal(err)
					}
				}
				text = strings.ReplaceAll(text, strings.TrimSuffix(mount, "/")+"/", local+"/")
			}
			cfg := filepath.Join(dir, configKey)
			if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := runCheck(t, bin, cfg)
			if err != nil || !strings.HasSuffix(strings.TrimSpace(out), ": ok") {
				t.Fatalf("tokenvend check: got %v:\n%s\nwant it to accept the chart's config", err, out)
			}
			// The check reads the certificate: without it, it must
			// refuse, or the run above proved nothing about the paths.
			if w.tls != nil {
				cert := path.Join(w.tlsMount.MountPath, "tls.crt")
				if !strings.Contains(w.configText, cert) {
					t.Fatalf("%s: no %s", configKey, cert)
				}
				local := localPath(t, text, "tls.crt")
				if err := os.Remove(local); err != nil {
					t.Fatal(err)
				}
				if out, err := runCheck(t, bin, cfg); err == nil || !strings.Contains(out, "server.tls") {
					t.Errorf("tokenvend check without %s: got %v:\n%s\nwant a failure naming server.tls", local, err, out)
				}
			}
		})
	}
}

// localPath finds the rewritten path of file in the config text.
func localPath(t *testing.T, text, file string) string {
	t.Helper()
	for _, f := range strings.Fields(text) {
		if strings.HasSuffix(f, "/"+file) {
			return strings.Trim(f, `"'`)
		}
	}
	t.Fatalf("config: no path to %s", file)
	return ""
}

// selfSignedTLS makes the files of a kubernetes.io/tls Secret: a P-256 key
// and a self-signed certificate for the Service's name, which is its own
// CA.
func selfSignedTLS(t *testing.T) map[string][]byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tokenvend"},
		DNSNames:              []string{"tokenvend", "tokenvend." + namespace + ".svc"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return map[string][]byte{
		"tls.crt": cert,
		"tls.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"ca.crt":  cert,
	}
}
