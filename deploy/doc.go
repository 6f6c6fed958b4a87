// Package deploy holds no code of its own. Its tests check what runs
// tokenvend elsewhere: they render the Kustomize manifests in kubernetes/
// and the Helm chart in helm/, decode every object strictly into the
// Kubernetes API types, assert the properties the deployment promises
// (TLS from a cert-manager Secret, probes
// that speak it, a locked-down container, secrets as files), run
// `tokenvend check` on the configs they carry, and read the Dockerfile.
// They parse the alerting rules in observability/ with Prometheus' rulefmt
// and check that the rules and the Grafana dashboard use only metrics a
// running tokenvend exports. It is a module of its own so that the service
// does not carry the Kubernetes dependencies; `make lint` runs it.
package deploy
