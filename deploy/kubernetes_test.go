package deploy

import (
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const (
	baseDir       = "kubernetes/base"
	overlayDir    = "kubernetes/overlays/example"
	secretExample = "kubernetes/base/secret.example.yaml"
	certExample   = "kubernetes/base/certificate.example.yaml"

	container  = "tokenvend"
	configKey  = "config.yaml"
	grpcPort   = 9090
	httpPort   = 8080
	replicas   = 2
	callerKey  = "tokenvend.dev/caller"
	namespace  = "tokenvend" // the example overlay's
	secretName = "tokenvend-secrets"
	tlsSecret  = "tokenvend-tls"
)

// TestManifests renders the base and the example overlay and checks each
// against what the deployment promises.
func TestManifests(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{baseDir, overlayDir} {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			o := render(t, dir)
			for kind, n := range map[string]int{
				"Deployment": len(o.deployments), "Service": len(o.services), "ConfigMap": len(o.configMaps),
				"PodDisruptionBudget": len(o.pdbs), "NetworkPolicy": len(o.netpols),
			} {
				if n != 1 {
					t.Fatalf("%s objects: got %d, want 1", kind, n)
				}
			}
			// The placeholder Secret must never be applied with the rest:
			// it would overwrite the real one at every apply.
			if len(o.secrets) != 0 {
				t.Errorf("Secrets rendered: got %d, want 0 (create tokenvend-secrets out of band)", len(o.secrets))
			}
			w := workload(t, o, secretExample)
			t.Run("Deployment", func(t *testing.T) { checkDeployment(t, w) })
			t.Run("config", func(t *testing.T) { checkConfig(t, w) })
			t.Run("Service", func(t *testing.T) { checkService(t, w, o) })
			t.Run("PodDisruptionBudget", func(t *testing.T) { checkPDB(t, w, o) })
			t.Run("NetworkPolicy", func(t *testing.T) { checkNetworkPolicy(t, w, o) })
		})
	}
}

// TestOverlay checks what the example overlay adds: a namespace held to the
// restricted Pod Security Standard and a pinned image.
func TestOverlay(t *testing.T) {
	t.Parallel()
	o := render(t, overlayDir)
	if len(o.namespaces) != 1 || o.namespaces[0].Name != namespace {
		t.Fatalf("Namespaces: got %d, want one named %s", len(o.namespaces), namespace)
	}
	if got := o.namespaces[0].Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Errorf("Namespace label pod-security.kubernetes.io/enforce: got %q, want restricted", got)
	}
	for _, m := range o.meta {
		if _, isNS := m.(*corev1.Namespace); !isNS && m.GetNamespace() != namespace {
			t.Errorf("%s: namespace %q, want %q", m.GetName(), m.GetNamespace(), namespace)
		}
	}
	image := workload(t, o, secretExample).c.Image
	name, tag := image, ""
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		name, tag = image[:i], image[i+1:]
	}
	if tag == "" || tag == "latest" || !strings.Contains(name, "/") || path.Base(strings.TrimSuffix(name, "@sha256")) != "tokenvend" {
		t.Errorf("image: got %q, want a registry path to tokenvend with a pinned tag or digest", image)
	}
}

// pod is the rendered Deployment with the parts the checks look at.
type pod struct {
	d                 *appsv1.Deployment
	spec              *corev1.PodSpec
	c                 *corev1.Container
	labels            labels.Set
	config            *corev1.ConfigMap
	configMount       corev1.VolumeMount
	secret            *corev1.SecretVolumeSource
	secretMount       corev1.VolumeMount
	tls               *corev1.SecretVolumeSource // the servers' certificate, if mounted
	tlsMount          corev1.VolumeMount
	configText        string
	exampleSecretKeys map[string]string
	exampleSecretName string
}

// workload finds the tokenvend container, its config, its secret volume
// (whose example, a Secret manifest, is the file example) and the servers'
// TLS Secret if mounted, failing the test when the wiring between them is
// broken.
func workload(t *testing.T, o *objects, example string) *pod {
	t.Helper()
	if len(o.deployments) != 1 {
		t.Fatalf("Deployments: got %d, want 1", len(o.deployments))
	}
	d := o.deployments[0]
	w := &pod{d: d, spec: &d.Spec.Template.Spec, labels: d.Spec.Template.Labels}
	for i := range w.spec.Containers {
		if w.spec.Containers[i].Name == container {
			w.c = &w.spec.Containers[i]
		}
	}
	if w.c == nil {
		t.Fatalf("Deployment %s: no container named %s", d.Name, container)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range w.spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range w.c.VolumeMounts {
		v, ok := volumes[m.Name]
		switch {
		case !ok:
			t.Fatalf("volumeMounts %s: no such volume", m.Name)
		case v.ConfigMap != nil:
			for _, cm := range o.configMaps {
				if cm.Name == v.ConfigMap.Name {
					w.config, w.configMount = cm, m
				}
			}
			if w.config == nil {
				t.Fatalf("volume %s: ConfigMap %s is not in the rendering", v.Name, v.ConfigMap.Name)
			}
		case v.Secret != nil && v.Secret.SecretName == tlsSecret:
			w.tls, w.tlsMount = v.Secret, m
		case v.Secret != nil:
			if w.secret != nil {
				t.Fatalf("volume %s: a second secret volume besides %s; the checks expect one", v.Name, tlsSecret)
			}
			w.secret, w.secretMount = v.Secret, m
		}
	}
	if w.config == nil || w.secret == nil {
		t.Fatalf("container %s: got config volume %v and secret volume %v, want both mounted", container, w.config != nil, w.secret != nil)
	}
	w.configText = w.config.Data[configKey]
	if w.configText == "" {
		t.Fatalf("ConfigMap %s: no %s", w.config.Name, configKey)
	}
	var s corev1.Secret
	if err := decodeStrict(readFile(t, example), &s); err != nil {
		t.Fatalf("%s: %v", example, err)
	}
	w.exampleSecretKeys, w.exampleSecretName = s.StringData, s.Name
	return w
}

func checkDeployment(t *testing.T, w *pod) {
	t.Parallel()
	d, spec, c := w.d, w.spec, w.c
	if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
		t.Errorf("replicas: got %v, want %d", deref(d.Spec.Replicas), replicas)
	}
	if !selects(t, d.Spec.Selector, w.labels) {
		t.Errorf("selector %v does not match the pod labels %v", d.Spec.Selector, w.labels)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil && ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rollingUpdate.maxUnavailable: got %s, want 0 (a rollout never drops below %d ready pods)", ru.MaxUnavailable.String(), replicas)
	}

	// The image's entrypoint runs `serve --config`: the manifests must not
	// replace it, and must mount the config where it reads it.
	if len(c.Command) > 0 || len(c.Args) > 0 {
		t.Errorf("command %q args %q: want neither, the image's entrypoint serves", c.Command, c.Args)
	}
	cfgPath := dockerfileConfigPath(t)
	if got, want := path.Join(w.configMount.MountPath, configKey), cfgPath; got != want || w.configMount.SubPath != "" {
		t.Errorf("config mounted as %s (subPath %q), want %s as the entrypoint reads it", got, w.configMount.SubPath, want)
	}

	for name, want := range map[string]int32{"grpc": grpcPort, "http": httpPort} {
		if got := containerPort(c, intstr.FromString(name)); got != want {
			t.Errorf("container port %s: got %d, want %d", name, got, want)
		}
	}
	// The probes ask the whole server: gRPC health for the service "", or
	// (with TLS, which the kubelet's gRPC probe cannot speak) /readyz and
	// /healthz on the HTTP port. A provider's health name goes NOT_SERVING
	// on rejected credentials, which every replica shares: probing it would
	// take every pod out (readiness) or restart them (liveness).
	probes := map[string]struct {
		p    *corev1.Probe
		path string
	}{"readinessProbe": {c.ReadinessProbe, "/readyz"}, "livenessProbe": {c.LivenessProbe, "/healthz"}}
	for name, pr := range probes {
		p := pr.p
		switch {
		case p == nil:
			t.Errorf("%s: missing", name)
		case p.TCPSocket != nil || p.Exec != nil || (p.GRPC == nil) == (p.HTTPGet == nil):
			t.Errorf("%s: got %+v, want the gRPC health probe or an HTTP GET of %s", name, p.ProbeHandler, pr.path)
		case p.GRPC != nil && p.GRPC.Port != grpcPort:
			t.Errorf("%s: gRPC port %d, want %d", name, p.GRPC.Port, grpcPort)
		case p.GRPC != nil && deref(p.GRPC.Service) != "":
			t.Errorf("%s: gRPC service %q, want \"\" (the whole server)", name, *p.GRPC.Service)
		case p.HTTPGet != nil && (containerPort(c, p.HTTPGet.Port) != httpPort || p.HTTPGet.Path != pr.path):
			t.Errorf("%s: GET %s on port %s, want %s on the http port (%d)", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), pr.path, httpPort)
		}
	}

	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := c.Resources.Requests[res]
		lim, hasLim := c.Resources.Limits[res]
		if !hasReq || !hasLim || req.Cmp(lim) > 0 || req.IsZero() {
			t.Errorf("resources %s: request %v limit %v, want both set, request <= limit", res, req.String(), lim.String())
		}
	}

	// The Go heap's soft limit sits under the container's memory limit,
	// with room for what is not heap (stacks, the runtime).
	if lim, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		var goLimit int64 = -1
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" {
				goLimit = parseGoMemLimit(e.Value)
			}
		}
		if goLimit <= 0 || goLimit > lim.Value()*9/10 || goLimit < lim.Value()/2 {
			t.Errorf("GOMEMLIMIT: got %d bytes, want set, between half and 90%% of limits.memory (%s)", goLimit, lim.String())
		}
	}

	// Pod and container security.
	psc, sc := spec.SecurityContext, c.SecurityContext
	if psc == nil {
		psc = new(corev1.PodSecurityContext)
	}
	if sc == nil {
		t.Fatal("container securityContext: missing")
	}
	if !deref(sc.ReadOnlyRootFilesystem) {
		t.Error("readOnlyRootFilesystem: want true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation: want false")
	}
	if deref(sc.Privileged) {
		t.Error("privileged: want false")
	}
	if !deref(sc.RunAsNonRoot) && !deref(psc.RunAsNonRoot) {
		t.Error("runAsNonRoot: want true")
	}
	for _, uid := range []*int64{sc.RunAsUser, psc.RunAsUser} {
		if uid != nil && *uid == 0 {
			t.Error("runAsUser: got 0, want a non-root uid")
		}
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities: got %+v, want drop ALL and add none", sc.Capabilities)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile: got %+v, want RuntimeDefault", seccomp)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken: want false (tokenvend never calls the Kubernetes API)")
	}

	// Secrets reach the process only as files it re-reads at every login.
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("env %s: from Secret %s, want secrets mounted as files", e.Name, e.ValueFrom.SecretKeyRef.Name)
		}
	}
	for _, e := range c.EnvFrom {
		if e.SecretRef != nil {
			t.Errorf("envFrom: Secret %s, want secrets mounted as files", e.SecretRef.Name)
		}
	}
	if w.secret.SecretName != secretName {
		t.Errorf("secret volume: Secret %q, want %q", w.secret.SecretName, secretName)
	}
	if w.secretMount.SubPath != "" || w.secretMount.SubPathExpr != "" {
		t.Errorf("secret mount: subPath %q: a subPath mount never sees a rotated Secret", w.secretMount.SubPath)
	}
	if !w.secretMount.ReadOnly || !w.configMount.ReadOnly {
		t.Error("config and secret mounts: want readOnly")
	}
	if m := w.secret.DefaultMode; m == nil || *m&0o007 != 0 {
		t.Errorf("secret defaultMode: got %o, want no access for others", deref(m))
	}
	if w.tls != nil {
		// cert-manager renews the certificate in place: only a directory
		// mount sees the new files.
		if w.tlsMount.SubPath != "" || w.tlsMount.SubPathExpr != "" {
			t.Errorf("%s mount: subPath %q: a subPath mount never sees a renewed certificate", tlsSecret, w.tlsMount.SubPath)
		}
		if !w.tlsMount.ReadOnly {
			t.Errorf("%s mount: want readOnly", tlsSecret)
		}
		if m := w.tls.DefaultMode; m == nil || *m&0o007 != 0 {
			t.Errorf("%s defaultMode: got %o, want no access for others (it holds the key)", tlsSecret, deref(m))
		}
		if w.tls.Optional != nil && *w.tls.Optional {
			t.Errorf("%s volume: optional, so a pod without its certificate would start", tlsSecret)
		}
	}
}

// exampleConfig is the part of tokenvend's config these checks read.
type exampleConfig struct {
	Server struct {
		GRPCAddr        string `json:"grpc_addr"`
		HTTPAddr        string `json:"http_addr"`
		ShutdownTimeout string `json:"shutdown_timeout"`
		TLS             struct {
			Cert     string `json:"cert"`
			Key      string `json:"key"`
			ClientCA string `json:"client_ca"`
		} `json:"tls"`
		TLSTerminatedByMesh bool `json:"tls_terminated_by_mesh"`
	} `json:"server"`
	Providers []map[string]any `json:"providers"`
	Callers   []map[string]any `json:"callers"`
}

// checkConfig checks the config in the ConfigMap against the pod: it
// listens where the Service and probes reach, and takes every secret from a
// file of the mounted Secret.
func checkConfig(t *testing.T, w *pod) {
	t.Parallel()
	var cfg exampleConfig
	if err := yaml.Unmarshal([]byte(w.configText), &cfg); err != nil {
		t.Fatalf("%s: %v", configKey, err)
	}
	for key, a := range map[string]struct {
		addr string
		port int32
	}{"server.grpc_addr": {cfg.Server.GRPCAddr, grpcPort}, "server.http_addr": {cfg.Server.HTTPAddr, httpPort}} {
		host, port, err := net.SplitHostPort(a.addr)
		if err != nil || (host != "0.0.0.0" && host != "" && host != "::") || port != strconv.Itoa(int(a.port)) {
			t.Errorf("%s: got %q, want 0.0.0.0:%d (every interface, the container port)", key, a.addr, a.port)
		}
	}
	// SIGTERM comes after the preStop sleep; the drain must end before the
	// kubelet's SIGKILL at terminationGracePeriodSeconds.
	drain := 15 * time.Second // tokenvend's default
	if cfg.Server.ShutdownTimeout != "" {
		var err error
		if drain, err = time.ParseDuration(cfg.Server.ShutdownTimeout); err != nil {
			t.Fatalf("server.shutdown_timeout: %v", err)
		}
	}
	var preStop time.Duration
	if l := w.c.Lifecycle; l != nil && l.PreStop != nil && l.PreStop.Sleep != nil {
		preStop = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
	}
	grace := 30 * time.Second // the Kubernetes default
	if g := w.spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if preStop+drain >= grace {
		t.Errorf("preStop sleep %v + server.shutdown_timeout %v: not within terminationGracePeriodSeconds %v", preStop, drain, grace)
	}

	if w.exampleSecretName != w.secret.SecretName {
		t.Errorf("the example Secret: name %q, want the mounted secret %q", w.exampleSecretName, w.secret.SecretName)
	}
	checkTLS(t, w, &cfg)
	files, envs := secretRefs(t, w.configText)
	if len(files) == 0 {
		t.Errorf("%s: no {file: ...} secret", configKey)
	}
	for _, e := range envs {
		t.Errorf("%s: secret {env: %s}: want {file: ...} from the mounted Secret", configKey, e)
	}
	for _, f := range files {
		key := path.Base(f)
		if path.Dir(f) != w.secretMount.MountPath {
			t.Errorf("{file: %s}: not in the secret mount %s", f, w.secretMount.MountPath)
		} else if _, ok := w.exampleSecretKeys[key]; !ok {
			t.Errorf("{file: %s}: %s has no key %s", f, secretExample, key)
		}
	}
	for i, p := range cfg.Providers {
		if pw, ok := p["password"]; ok {
			if m, isMap := pw.(map[string]any); !isMap || m["file"] == nil {
				t.Errorf("providers[%d].password: want {file: ...}", i)
			}
		}
	}
}

// checkTLS checks that callers' API keys and tokens never cross the pod
// network in the clear: the config has callers (it listens beyond
// loopback), and with them either server.tls, whose files come from the
// mounted Secret that certificate.example.yaml has cert-manager keep, or
// server.tls_terminated_by_mesh. The probes speak what the ports serve.
func checkTLS(t *testing.T, w *pod, cfg *exampleConfig) {
	t.Helper()
	if len(cfg.Callers) == 0 {
		t.Errorf("%s: no callers, so on 0.0.0.0 anyone who reaches the ports would get every token", configKey)
	}
	tlsOn := cfg.Server.TLS.Cert != ""
	if !tlsOn && !cfg.Server.TLSTerminatedByMesh {
		t.Fatalf("%s: callers on 0.0.0.0 with neither server.tls nor server.tls_terminated_by_mesh: API keys and tokens would cross the network in the clear", configKey)
	}
	for name, p := range map[string]*corev1.Probe{"readinessProbe": w.c.ReadinessProbe, "livenessProbe": w.c.LivenessProbe} {
		if p == nil {
			continue
		}
		if tlsOn && p.GRPC != nil {
			t.Errorf("%s: gRPC with server.tls: the kubelet's gRPC probe cannot speak TLS; probe over HTTPS", name)
		}
		if p.HTTPGet != nil && (p.HTTPGet.Scheme == corev1.URISchemeHTTPS) != tlsOn {
			t.Errorf("%s: scheme %q, want HTTPS exactly when server.tls is set (%v)", name, p.HTTPGet.Scheme, tlsOn)
		}
	}
	if !tlsOn {
		return
	}
	if w.tls == nil {
		t.Fatalf("server.tls: no volume of the Secret %s mounted", tlsSecret)
	}
	// The keys of a kubernetes.io/tls Secret, as cert-manager writes it.
	for key, f := range map[string]string{"tls.crt": cfg.Server.TLS.Cert, "tls.key": cfg.Server.TLS.Key, "ca.crt": cfg.Server.TLS.ClientCA} {
		if f != "" && f != path.Join(w.tlsMount.MountPath, key) {
			t.Errorf("server.tls: %s, want %s from the mounted Secret %s", f, path.Join(w.tlsMount.MountPath, key), tlsSecret)
		}
	}
	var cert struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Spec       struct {
			SecretName string   `json:"secretName"`
			DNSNames   []string `json:"dnsNames"`
			Usages     []string `json:"usages"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, certExample), &cert); err != nil {
		t.Fatalf("%s: %v", certExample, err)
	}
	if cert.APIVersion != "cert-manager.io/v1" || cert.Kind != "Certificate" || cert.Spec.SecretName != w.tls.SecretName {
		t.Errorf("%s: got %s %s for Secret %q, want a cert-manager.io/v1 Certificate for the mounted %q", certExample, cert.APIVersion, cert.Kind, cert.Spec.SecretName, w.tls.SecretName)
	}
	// Callers dial the Service by its name in the overlay's namespace.
	if want := "tokenvend." + namespace + ".svc"; !slices.Contains(cert.Spec.DNSNames, want) {
		t.Errorf("%s: dnsNames %v, want %s among them", certExample, cert.Spec.DNSNames, want)
	}
	if !slices.Contains(cert.Spec.Usages, "server auth") {
		t.Errorf("%s: usages %v, want server auth", certExample, cert.Spec.Usages)
	}
}

// secretRefs lists the {file: PATH} and {env: NAME} values in a config.
func secretRefs(t *testing.T, text string) (files, envs []string) {
	t.Helper()
	var doc any
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatalf("%s: %v", configKey, err)
	}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if s, ok := v["file"].(string); ok && len(v) == 1 {
				files = append(files, s)
			}
			if s, ok := v["env"].(string); ok && len(v) == 1 {
				envs = append(envs, s)
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	return files, envs
}

func checkService(t *testing.T, w *pod, o *objects) {
	t.Parallel()
	s := o.services[0]
	if len(s.Spec.Selector) == 0 || !labels.SelectorFromSet(s.Spec.Selector).Matches(w.labels) {
		t.Errorf("selector %v does not match the pod labels %v", s.Spec.Selector, w.labels)
	}
	want := map[string]int32{"grpc": grpcPort, "http": httpPort}
	for _, p := range s.Spec.Ports {
		if p.Port != want[p.Name] || containerPort(w.c, p.TargetPort) != want[p.Name] {
			t.Errorf("port %s: %d to %s, want %d to the container's %s port", p.Name, p.Port, p.TargetPort.String(), want[p.Name], p.Name)
		}
		delete(want, p.Name)
	}
	if len(want) > 0 {
		t.Errorf("ports missing: %v", want)
	}
}

func checkPDB(t *testing.T, w *pod, o *objects) {
	t.Parallel()
	p := o.pdbs[0]
	if !selects(t, p.Spec.Selector, w.labels) {
		t.Errorf("selector %v does not match the pod labels %v", p.Spec.Selector, w.labels)
	}
	// The pods a drain may take at once: at least one, never all.
	var mayEvict int
	switch {
	case p.Spec.MaxUnavailable != nil && p.Spec.MinAvailable == nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MaxUnavailable, replicas, false)
		if err != nil {
			t.Fatal(err)
		}
		mayEvict = n
	case p.Spec.MinAvailable != nil && p.Spec.MaxUnavailable == nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MinAvailable, replicas, true)
		if err != nil {
			t.Fatal(err)
		}
		mayEvict = replicas - n
	default:
		t.Fatal("want exactly one of minAvailable and maxUnavailable")
	}
	if mayEvict < 1 || mayEvict >= replicas {
		t.Errorf("a drain may evict %d of %d pods at once, want 1 to %d", mayEvict, replicas, replicas-1)
	}
}

func checkNetworkPolicy(t *testing.T, w *pod, o *objects) {
	t.Parallel()
	np := o.netpols[0]
	if len(np.Spec.PodSelector.MatchLabels)+len(np.Spec.PodSelector.MatchExpressions) == 0 || !selects(t, &np.Spec.PodSelector, w.labels) {
		t.Errorf("podSelector %v does not select the pods %v", np.Spec.PodSelector, w.labels)
	}
	if !slices.Contains(np.Spec.PolicyTypes, "Ingress") {
		t.Errorf("policyTypes: got %v, want Ingress", np.Spec.PolicyTypes)
	}
	if len(np.Spec.Ingress) == 0 {
		t.Fatal("ingress: no rule, so no caller could reach tokenvend")
	}
	reached := map[int32]bool{}
	for i, r := range np.Spec.Ingress {
		// An empty from admits every source, empty ports every port.
		if len(r.From) == 0 {
			t.Errorf("ingress[%d]: no from, which admits every source", i)
		}
		for j, peer := range r.From {
			ns := peer.NamespaceSelector
			if peer.IPBlock != nil || ns == nil || len(ns.MatchExpressions) > 0 || ns.MatchLabels[callerKey] != "true" {
				t.Errorf("ingress[%d].from[%d]: got %+v, want only namespaces labelled %s=true", i, j, peer, callerKey)
			}
		}
		if len(r.Ports) == 0 {
			t.Errorf("ingress[%d]: no ports, which admits every port", i)
		}
		for _, p := range r.Ports {
			n := containerPort(w.c, *p.Port)
			if n == 0 {
				t.Errorf("ingress[%d]: port %s is not a port of the container", i, p.Port.String())
			}
			reached[n] = true
		}
	}
	for _, p := range []int32{grpcPort, httpPort} {
		if !reached[p] {
			t.Errorf("ingress: callers cannot reach port %d", p)
		}
	}
}

// containerPort resolves a port number or name to the container's port
// number; 0 when the container has no such port.
func containerPort(c *corev1.Container, p intstr.IntOrString) int32 {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort
		}
	}
	return 0
}

// selects reports whether the non-empty selector s matches set.
func selects(t *testing.T, s *metav1.LabelSelector, set labels.Set) bool {
	t.Helper()
	if s == nil {
		return false
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Errorf("selector %v: %v", s, err)
		return false
	}
	return !sel.Empty() && sel.Matches(set)
}

func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// parseGoMemLimit reads a GOMEMLIMIT value (bytes, with an optional B,
// KiB, MiB, GiB or TiB suffix), or returns -1.
func parseGoMemLimit(v string) int64 {
	mult := int64(1)
	for i, suffix := range []string{"TiB", "GiB", "MiB", "KiB", "B"} {
		if n, ok := strings.CutSuffix(v, suffix); ok {
			v, mult = n, int64(1)<<(10*(4-i))
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n * mult
}
