package config_test

import (
	"strings"
	"testing"

	"github.com/tokenvend/tokenvend/internal/config"
)

func replace(s, old, new string) string { return strings.Replace(s, old, new, 1) }

// find returns the provider named name of a valid document.
func find(t *testing.T, doc, name string) config.Provider {
	t.Helper()
	mustParse(t, doc)
	p, ok := findOK(doc, name)
	if !ok {
		t.Fatalf("no provider %q in\n%s", name, doc)
	}
	return p
}

func findOK(doc, name string) (config.Provider, bool) {
	cfg, err := config.Parse([]byte(doc))
	if err != nil {
		return config.Provider{}, false
	}
	for _, p := range cfg.Providers {
		if p.Name == name {
			return p, true
		}
	}
	return config.Provider{}, false
}

// TestProviderSame: what a reload counts as an unchanged provider.
func TestProviderSame(t *testing.T) {
	t.Parallel()
	const base = `
providers:
  - name: kyc
    kind: kyc
    base_url: http://127.0.0.1:1
    username: ops@example.com
    password: {file: /run/secrets/kyc}  # rotated in place
    token_ttl: 1h
`
	for _, tc := range []struct {
		name, doc string
		same      bool
	}{
		{"identical", base, true},
		{"comments, quoting, order, flow style", `
# a comment
providers:
  - {password: {file: "/run/secrets/kyc"}, token_ttl: 1h, kind: kyc, name: "kyc",
     username: 'ops@example.com', base_url: http://127.0.0.1:1}
`, true},
		{"moved in the list", `
providers:
  - {name: other, kind: kyc}
  - name: kyc
    kind: kyc
    base_url: http://127.0.0.1:1
    username: ops@example.com
    password: {file: /run/secrets/kyc}
    token_ttl: 1h
`, true},
		{"through a merge key", `
providers:
  - &common {name: other, kind: kyc, base_url: http://127.0.0.1:1, username: ops@example.com}
  - <<: *common
    name: kyc
    password: {file: /run/secrets/kyc}
    token_ttl: 1h
`, true},
		{"secret file moved", replace(base, "/run/secrets/kyc", "/run/secrets/kyc2"), false},
		{"secret now literal", replace(base, "{file: /run/secrets/kyc}", "hunter2"), false},
		{"user changed", replace(base, "ops@", "dev@"), false},
		{"a key added", base + "    audience: x\n", false},
		{"same duration spelt otherwise", replace(base, "1h", "60m"), false},
		{"renamed", replace(base, "name: kyc", "name: kyc2"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := find(t, base, "kyc")
			b, ok := findOK(tc.doc, "kyc")
			if !ok {
				b = find(t, tc.doc, "kyc2")
			}
			if got := a.Same(b); got != tc.same {
				t.Errorf("Same: got %v, want %v", got, tc.same)
			}
			if got := b.Same(a); got != tc.same {
				t.Errorf("Same (reversed): got %v, want %v", got, tc.same)
			}
		})
	}
}

// TestProviderSameLiteralSecret: a literal secret compares by value.
func TestProviderSameLiteralSecret(t *testing.T) {
	t.Parallel()
	doc := "providers:\n  - {name: kyc, kind: kyc, password: %s}\n"
	a := find(t, replace(doc, "%s", "one"), "kyc")
	if !a.Same(find(t, replace(doc, "%s", `"one"`), "kyc")) {
		t.Error("the same literal password, quoted: got changed, want same")
	}
	if a.Same(find(t, replace(doc, "%s", "two"), "kyc")) {
		t.Error("another literal password: got same, want changed")
	}
}
