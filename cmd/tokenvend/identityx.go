package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/tokenvend/tokenvend/internal/provider/identityx"
)

const identityxUsage = `usage:
  tokenvend identityx send-link --endpoint URL --email E [--app-id A --auth-url U]
        mail a magic link to an organisation user (or, with --app-id, to a user of that app)
  tokenvend identityx login --endpoint URL --link-token T [--app-id A]
        exchange the link's token for a long-lived OrgUser (or AppUser) token; prints it
  tokenvend identityx api-token --endpoint URL --org-user-token T
        make the permanent OrgUserApiToken of an OrgUser token's user; prints it

A printed token is the only thing written to stdout. Store it as the provider's token
secret; nothing is written to disk.
`

// identityxCommand runs the IdentityX enrolment commands: an operator's
// one-time steps to obtain the long-lived token an identityx provider is
// configured with.
func identityxCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, identityxUsage)
		return errors.New("identityx: a command is required")
	}
	fs := flag.NewFlagSet("tokenvend identityx "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	endpoint := fs.String("endpoint", "", "the IdentityX GraphQL URL")
	enroller := func() (*identityx.Enroller, error) {
		if *endpoint == "" {
			return nil, errors.New("--endpoint URL is required")
		}
		return identityx.NewEnroller(*endpoint, &http.Client{Timeout: 30 * time.Second})
	}
	switch args[0] {
	case "send-link":
		email := fs.String("email", "", "the user's e-mail address")
		appID := fs.String("app-id", "", "the application, for an app user's link")
		authURL := fs.String("auth-url", "", "with --app-id: the page the link opens; the link token is its token parameter")
		if err := parse(fs, args[1:], false); err != nil {
			return err
		}
		switch {
		case *email == "":
			return errors.New("--email E is required")
		case (*appID == "") != (*authURL == ""):
			return errors.New("--app-id and --auth-url go together: an app user's link opens the app's auth URL")
		}
		e, err := enroller()
		if err != nil {
			return err
		}
		if *appID == "" {
			err = e.SendUserLink(ctx, *email)
		} else {
			err = e.SendAppUserLink(ctx, *appID, *email, *authURL)
		}
		if err != nil {
			return err
		}
		login := "tokenvend identityx login --endpoint " + *endpoint
		if *appID != "" {
			login += " --app-id " + *appID
		}
		fmt.Fprintf(stderr, "IdentityX mailed a login link to %s. It works once, within an hour.\n"+
			"Run %s --link-token T\nwith T the link's token parameter.\n", *email, login)
		return nil
	case "login":
		link := fs.String("link-token", "", "the token parameter of the mailed link")
		appID := fs.String("app-id", "", "the application, for an app user's link")
		if err := parse(fs, args[1:], false); err != nil {
			return err
		}
		if *link == "" {
			return errors.New("--link-token T is required")
		}
		e, err := enroller()
		if err != nil {
			return err
		}
		var tok, credential string
		if *appID == "" {
			tok, err = e.UserLogin(ctx, *link)
			credential = "org_user"
		} else {
			tok, err = e.AppUserLogin(ctx, *appID, *link)
			credential = "app_user (with app_id " + *appID + ")"
		}
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok)
		fmt.Fprintf(stderr, "Store the token above as the token secret of an identityx provider with credential %s.\n"+
			"It does not expire: logging out revokes it.\n", credential)
		return nil
	case "api-token":
		orgTok := fs.String("org-user-token", "", "an OrgUser token (from tokenvend identityx login)")
		if err := parse(fs, args[1:], false); err != nil {
			return err
		}
		if *orgTok == "" {
			return errors.New("--org-user-token T is required")
		}
		e, err := enroller()
		if err != nil {
			return err
		}
		tok, err := e.CreateAPIToken(ctx, *orgTok)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok)
		fmt.Fprint(stderr, "Store the token above as the token secret of an identityx provider with credential org_user_api_token.\n"+
			"It does not expire and is the same one each time until it is deleted.\n")
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stderr, identityxUsage)
		return nil
	default:
		fmt.Fprint(stderr, identityxUsage)
		return fmt.Errorf("identityx: unknown command %q", args[0])
	}
}
