package demo

import (
	"fmt"

	"github.com/tokenvend/tokenvend/internal/provider/insly/inslysim"
)

// Demo credentials of the insly simulator. They exist only inside it.
const (
	InslyTenant   = "demo"
	InslyUser     = "ops@insly.example.com"
	InslyPassword = "demo-insly-password"
)

// startInsly runs the Insly identifier simulator with one user and returns
// a password-grant provider for it: the grant that logs in once, then
// refreshes.
func startInsly(d *Demo) (string, error) {
	sim := inslysim.New(inslysim.Options{
		Tenant: InslyTenant,
		Users:  []inslysim.User{{Email: InslyUser, Password: InslyPassword}},
	})
	url, err := d.serve(sim)
	if err != nil {
		return "", err
	}
	d.Simulators["insly"] = sim
	d.Upstreams["insly"] = url + inslysim.PoliciesPath
	return fmt.Sprintf("  - name: insly\n    kind: insly\n    base_url: %q\n    tenant: %q\n    grant: password\n    username: %q\n    password: %q\n",
		url+inslysim.PathPrefix, InslyTenant, InslyUser, InslyPassword) + proxyBlock(url), nil
}
