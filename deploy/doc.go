// Package deploy holds no code of its own. Its tests check what runs
// tokenvend elsewhere: they render the Kustomize manifests in kubernetes/,
// decode every object strictly into the Kubernetes API types, assert the
// properties the deployment promises (TLS from a cert-manager Secret, probes
// that speak it, a locked-down container, secrets as files), run `tokenvend
// check` on the example config, and read the Dockerfile. It is a module of its own so that the service
// does not carry the Kubernetes dependencies; `make lint` runs it.
package deploy
