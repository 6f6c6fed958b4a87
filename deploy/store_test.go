package deploy

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const (
	storeOverlayDir = "kubernetes/overlays/redis"
	storeExample    = "kubernetes/overlays/redis/store-secret.example.yaml"
	storeSecret     = "tokenvend-store"
)

// storeConfig is the part of the config the store overlay adds.
type storeConfig struct {
	Store struct {
		Redis struct {
			Addrs    []string       `json:"addrs"`
			Password map[string]any `json:"password"`
			TLS      struct {
				CA   string `json:"ca"`
				Cert string `json:"cert"`
				Key  string `json:"key"`
			} `json:"tls"`
		} `json:"redis"`
		EncryptionKeys []struct {
			ID  string         `json:"id"`
			Key map[string]any `json:"key"`
		} `json:"encryption_keys"`
	} `json:"store"`
}

// TestStoreOverlay renders the overlay with the shared store and checks
// what it promises: several replicas, Redis over TLS, the encryption key
// and Redis's password and CA as files of the Secret tokenvend-store
// (mounted read-only, never rendered, its example listing every key the
// config names), and a config that `tokenvend check` accepts, and refuses
// with a key of the wrong length.
func TestStoreOverlay(t *testing.T) {
	t.Parallel()
	o := render(t, storeOverlayDir)
	if len(o.deployments) != 1 || len(o.configMaps) != 1 || len(o.services) != 1 || len(o.pdbs) != 1 || len(o.netpols) != 1 {
		t.Fatalf("rendered %d Deployments, %d ConfigMaps, %d Services, %d PDBs, %d NetworkPolicies; want one each",
			len(o.deployments), len(o.configMaps), len(o.services), len(o.pdbs), len(o.netpols))
	}
	if len(o.secrets) != 0 {
		t.Errorf("Secrets rendered: got %d, want 0 (create %s out of band)", len(o.secrets), storeSecret)
	}
	d := o.deployments[0]
	if r := d.Spec.Replicas; r == nil || *r < 3 {
		t.Errorf("replicas: got %v, want at least 3 (the store makes them one broker)", r)
	}
	spec := &d.Spec.Template.Spec
	var c *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == container {
			c = &spec.Containers[i]
		}
	}
	if c == nil {
		t.Fatalf("no container %s", container)
	}
	mounts := map[string]corev1.VolumeMount{} // by Secret name
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.Secret != nil {
				mounts[v.Secret.SecretName] = m
			}
		}
	}
	for _, s := range []string{secretName, tlsSecret, storeSecret} {
		if m, ok := mounts[s]; !ok || !m.ReadOnly {
			t.Errorf("Secret %s: mounted %v, read-only %v; want it mounted read-only", s, ok, m.ReadOnly)
		}
	}
	storeMount := mounts[storeSecret].MountPath

	text := o.configMaps[0].Data[configKey]
	var cfg storeConfig
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatalf("%s: %v", configKey, err)
	}
	r := cfg.Store.Redis
	if len(r.Addrs) == 0 {
		t.Fatal("store.redis.addrs: none")
	}
	if r.TLS.CA == "" || path.Dir(r.TLS.CA) != storeMount {
		t.Errorf("store.redis.tls.ca: got %q, want a file of the mounted Secret %s (Redis over TLS)", r.TLS.CA, storeSecret)
	}
	if len(cfg.Store.EncryptionKeys) == 0 {
		t.Fatal("store.encryption_keys: none")
	}
	var example corev1.Secret
	if err := decodeStrict(readFile(t, storeExample), &example); err != nil {
		t.Fatalf("%s: %v", storeExample, err)
	}
	if example.Name != storeSecret {
		t.Errorf("%s: name %q, want %q", storeExample, example.Name, storeSecret)
	}
	files := []string{r.TLS.CA}
	for _, ref := range append([]map[string]any{r.Password}, keyRefs(cfg)...) {
		f, ok := ref["file"].(string)
		if !ok || path.Dir(f) != storeMount {
			t.Errorf("store secret %v: want {file: ...} from the mounted Secret %s", ref, storeSecret)
			continue
		}
		files = append(files, f)
	}
	for _, f := range files {
		if _, ok := example.StringData[path.Base(f)]; !ok {
			t.Errorf("%s: has no key %s, which the config reads", storeExample, path.Base(f))
		}
	}

	// tokenvend check on the config, its mounts stood in for by files.
	dir := t.TempDir()
	text = standIn(t, text, mounts[secretName].MountPath, filepath.Join(dir, "secrets"), placeholders(t))
	tlsDir := filepath.Join(dir, "tls")
	writeServerPair(t, tlsDir)
	text = strings.ReplaceAll(text, mounts[tlsSecret].MountPath+"/", tlsDir+"/")
	ca, err := os.ReadFile(filepath.Join(tlsDir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	storeFiles := map[string]string{"redis-password": "placeholder", "redis-ca.crt": string(ca)}
	for _, ref := range keyRefs(cfg) {
		storeFiles[path.Base(ref["file"].(string))] = base64.StdEncoding.EncodeToString(key)
	}
	storeDir := filepath.Join(dir, "store")
	text = standIn(t, text, storeMount, storeDir, storeFiles)
	cfgPath := filepath.Join(dir, configKey)
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := buildTokenvend(t, dir)
	if out, err := runCheck(t, bin, cfgPath); err != nil || !strings.HasSuffix(strings.TrimSpace(out), ": ok") {
		t.Fatalf("tokenvend check: got %v:\n%s\nwant it to accept the store overlay's config", err, out)
	}
	// A key of 16 bytes is refused, naming it: the check did read it.
	first := filepath.Join(storeDir, path.Base(keyRefs(cfg)[0]["file"].(string)))
	if err := os.WriteFile(first, []byte(base64.StdEncoding.EncodeToString(key[:16])), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCheck(t, bin, cfgPath); err == nil || !strings.Contains(out, "store.encryption_keys[0].key") {
		t.Errorf("tokenvend check with a 16-byte key: got %v:\n%s\nwant a failure naming store.encryption_keys[0].key", err, out)
	}
}

// keyRefs are the secret references of the encryption keys.
func keyRefs(cfg storeConfig) []map[string]any {
	var out []map[string]any
	for _, k := range cfg.Store.EncryptionKeys {
		out = append(out, k.Key)
	}
	return out
}

// placeholders are the values of the base's example Secret.
func placeholders(t *testing.T) map[string]string {
	t.Helper()
	var s corev1.Secret
	if err := decodeStrict(readFile(t, secretExample), &s); err != nil {
		t.Fatalf("%s: %v", secretExample, err)
	}
	return s.StringData
}

// standIn writes files into dir and points the config's mount at it.
func standIn(t *testing.T, text, mount, dir string, files map[string]string) string {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, v := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mount = strings.TrimSuffix(mount, "/") + "/"
	if !strings.Contains(text, mount) {
		t.Fatalf("%s: nothing from the mount %s", configKey, mount)
	}
	return strings.ReplaceAll(text, mount, dir+"/")
}
