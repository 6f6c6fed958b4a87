package demo

import (
	"fmt"

	"github.com/tokenvend/tokenvend/internal/provider/ibanera/ibanerasim"
)

// Demo credentials of the ibanera simulator. They exist only inside it.
const (
	IbaneraUser     = "treasury@example.com"
	IbaneraPassword = "demo-ibanera-password"
	// IbaneraTOTPSecret is the demo account's Base32 TOTP shared secret.
	IbaneraTOTPSecret = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"
)

// startIbanera runs the Ibanera simulator with one account (on the real
// clock: TOTP codes are checked against it) and returns its provider.
func startIbanera(d *Demo) (string, error) {
	sim := ibanerasim.New(ibanerasim.Options{Users: []ibanerasim.User{
		{Username: IbaneraUser, Password: IbaneraPassword, TOTPSecret: IbaneraTOTPSecret},
	}})
	url, err := d.serve(sim)
	if err != nil {
		return "", err
	}
	d.Simulators["ibanera"] = sim
	d.Upstreams["ibanera"] = url + ibanerasim.AccountsPath
	return fmt.Sprintf("  - name: ibanera\n    kind: ibanera\n    base_url: %q\n    username: %q\n    password: %q\n    totp_secret: %q\n",
		url, IbaneraUser, IbaneraPassword, IbaneraTOTPSecret) + proxyBlock(url), nil
}
