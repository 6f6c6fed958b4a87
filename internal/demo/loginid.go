package demo

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"

	"github.com/tokenvend/tokenvend/internal/provider/loginid/loginidsim"
)

// Demo settings of the LoginID simulator.
const (
	// LoginIDClientID is the demo API credential's client id.
	LoginIDClientID = "demo-loginid-client"
	// LoginIDResourcePath is the endpoint Upstreams["loginid"] points at:
	// GET, with a token for scope users.retrieve.
	LoginIDResourcePath = "/manage/users/demo-user"
)

// startLoginID runs the LoginID simulator for an API credential whose P-256
// key is generated here, at every start: no key is ever written to disk.
// The provider block carries the private key the way LoginID's dashboard
// hands it out, one line with literal `\n`, single-quoted so that YAML keeps
// the backslashes.
func startLoginID(d *Demo) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	oneLine := strings.ReplaceAll(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "\n", `\n`)

	sim := loginidsim.New(loginidsim.Options{PublicKey: &key.PublicKey, ClientID: LoginIDClientID})
	url, err := d.serve(sim)
	if err != nil {
		return "", err
	}
	d.Simulators["loginid"] = sim
	d.Upstreams["loginid"] = url + LoginIDResourcePath
	var scopes []string
	for _, ep := range loginidsim.DefaultEndpoints() {
		scopes = append(scopes, ep.Scope)
	}
	return fmt.Sprintf("  - name: loginid\n    kind: loginid\n    private_key: '%s'\n    client_id: %q\n    scopes: [%s]\n",
		oneLine, LoginIDClientID, strings.Join(scopes, ", ")) + proxyBlock(url), nil
}
