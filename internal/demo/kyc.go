package demo

import (
	"fmt"
	"time"

	"github.com/tokenvend/tokenvend/internal/provider/kyc/kycsim"
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
		url, KYCUser, KYCPassword) + proxyBlock(url), nil
}

// SetKYCTokenLifetime makes the kyc simulator issue tokens that live
// lifetime, and lowers cache.min_valid to a tenth of it so such a token is
// still served from the cache past its refresh point: for watching
// refreshes happen (`tokenvend demo --token-lifetime`, `make bench`).
func (d *Demo) SetKYCTokenLifetime(lifetime time.Duration) {
	d.Simulators["kyc"].(*kycsim.Server).SetLifetime(lifetime)
	d.Config.Cache.MinValid = min(d.Config.Cache.MinValid, lifetime/10)
}
