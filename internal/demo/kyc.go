package demo

import (
	"fmt"

	"github.com/tokenvend/tokenvend/internal/kycsim"
)

// Demo credentials of the kyc simulator. They exist only inside it.
const (
	KYCUser     = "ops@example.com"
	KYCPassword = "demo-kyc-password"
)

func startKYC(d *Demo) (string, error) {
	sim := kycsim.New(kycsim.Options{Users: []kycsim.User{{Email: KYCUser, Password: KYCPassword}}})
	url, err := d.serve(sim)
	if err != nil {
		return "", err
	}
	d.Simulators["kyc"] = sim
	d.Upstreams["kyc"] = url + kycsim.ResourcePath
	return fmt.Sprintf("  - name: kyc\n    kind: kyc\n    base_url: %q\n    username: %q\n    password: %q\n",
		url, KYCUser, KYCPassword), nil
}
