package demo

import (
	"fmt"

	"github.com/tokenvend/tokenvend/internal/provider/identityx/identityxsim"
)

// startIdentityX serves the IdentityX simulator with its default users and
// configures provider identityx with an OrgUserApiToken, the credential a
// service holds unattended. The simulator signs with a key of its own, so
// the token is issued afresh at every start: there is nothing to enrol.
func startIdentityX(d *Demo) (string, error) {
	sim := identityxsim.New(identityxsim.Options{})
	url, err := d.serve(sim)
	if err != nil {
		return "", err
	}
	d.Simulators["identityx"] = sim
	d.Upstreams["identityx"] = url + "/graphql"
	return fmt.Sprintf("  - name: identityx\n    kind: identityx\n    endpoint: %q\n    credential: org_user_api_token\n    token: %q\n",
		url+"/graphql", sim.IssueAPIToken(identityxsim.DefaultOrgUserEmail)) + proxyBlock(url), nil
}
