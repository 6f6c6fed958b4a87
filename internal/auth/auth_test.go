package auth

import (
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"net/url"
	"testing"

	"github.com/tokenvend/tokenvend/internal/config"
)

func hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func TestAllowed(t *testing.T) {
	t.Parallel()
	p := New([]config.Caller{
		{ID: "spiffe://mesh/billing", Allow: []config.Grant{
			{Provider: "insly", Scopes: []string{"*"}},
			{Provider: "loginid", Scopes: []string{"users.*", "codes.generate"}},
			{Provider: "kyc"},
		}},
		{ID: "key:reporting", APIKeySHA256: hash("k"), Allow: []config.Grant{{Provider: "kyc"}, {Provider: "kyc", Scopes: []string{"extra"}}}},
	})
	for _, tc := range []struct {
		id, provider, scope string
		isDefault, want     bool
	}{
		{"spiffe://mesh/billing", "insly", "auth/t", true, true},
		{"spiffe://mesh/billing", "insly", "anything", false, true},
		{"spiffe://mesh/billing", "loginid", "users.create", false, true},
		{"spiffe://mesh/billing", "loginid", "users.", false, true},
		{"spiffe://mesh/billing", "loginid", "codes.generate", false, true},
		{"spiffe://mesh/billing", "loginid", "codes.authorize", false, false},
		{"spiffe://mesh/billing", "loginid", "usersX", false, false},
		{"spiffe://mesh/billing", "kyc", "", true, true},
		{"spiffe://mesh/billing", "kyc", "admin", false, false}, // no scope list: the default only
		{"spiffe://mesh/billing", "ibanera", "", true, false},   // no grant
		{"key:reporting", "kyc", "", true, true},                // two grants add up
		{"key:reporting", "kyc", "extra", false, true},
		{"key:reporting", "insly", "auth/t", true, false},
		{"nobody", "kyc", "", true, false},
		{"", "kyc", "", true, false},
	} {
		if got := p.Decide(tc.id, tc.provider, tc.scope, tc.isDefault, "") == Allow; got != tc.want {
			t.Errorf("Allowed(%q, %q, %q, default=%v): got %v, want %v", tc.id, tc.provider, tc.scope, tc.isDefault, got, tc.want)
		}
	}
	if open := New(nil); open.Enforced() || open.Decide("", "kyc", "x", false, "anyone") != Allow || !open.MayUse("", "kyc") {
		t.Error("without callers: got a policy that refuses, want one that allows everyone")
	}
	if closed := New([]config.Caller{}); !closed.Enforced() || closed.Decide("", "kyc", "", true, "") == Allow || closed.MayUse("", "kyc") {
		t.Error("with an empty callers list: got a policy that allows, want one that refuses everyone")
	}
}

// TestSubjectGrants: a subject must be covered by the same grant as the
// scope; a grant without subjects covers none; a request without a
// subject is judged on its scope alone.
func TestSubjectGrants(t *testing.T) {
	t.Parallel()
	p := New([]config.Caller{
		{ID: "key:billing", APIKeySHA256: hash("b"), Allow: []config.Grant{
			{Provider: "loginid", Scopes: []string{"users.retrieve"}, Subjects: []string{"*@billing.example.com", "ops@example.com"}},
			{Provider: "loginid", Scopes: []string{"codes.generate"}, Subjects: []string{"svc-*"}},
			{Provider: "loginid", Scopes: []string{"users.create"}},
		}},
		{ID: "key:any", APIKeySHA256: hash("a"), Allow: []config.Grant{
			{Provider: "loginid", Scopes: []string{"*"}, Subjects: []string{"*"}},
		}},
	})
	for _, tc := range []struct {
		id, scope, subject string
		want               Decision
	}{
		{"key:billing", "users.retrieve", "alice@billing.example.com", Allow},
		{"key:billing", "users.retrieve", "ops@example.com", Allow},
		{"key:billing", "users.retrieve", "", Allow}, // no subject: the scope decides
		{"key:billing", "users.retrieve", "alice@example.com", DenySubject},
		{"key:billing", "users.retrieve", "@billing.example.com.evil", DenySubject},
		{"key:billing", "users.retrieve", "Ops@example.com", DenySubject}, // case-sensitive
		{"key:billing", "users.retrieve", "svc-reports", DenySubject},     // the other grant's subject
		{"key:billing", "codes.generate", "svc-reports", Allow},
		{"key:billing", "codes.generate", "svc-", Allow},
		{"key:billing", "codes.generate", "alice@billing.example.com", DenySubject}, // the other grant's subject
		{"key:billing", "users.create", "svc-reports", DenySubject},                 // a grant without subjects allows none
		{"key:billing", "users.create", "", Allow},
		{"key:billing", "users.delete", "svc-reports", DenyScope},
		{"key:any", "users.delete", "anyone at all", Allow},
		{"nobody", "users.retrieve", "", DenyProvider},
	} {
		if got := p.Decide(tc.id, "loginid", tc.scope, false, tc.subject); got != tc.want {
			t.Errorf("Decide(%q, loginid, %q, subject %q): got %v, want %v", tc.id, tc.scope, tc.subject, got, tc.want)
		}
	}
	if p.Decide("key:billing", "kyc", "", true, "") != DenyProvider || p.MayUse("key:billing", "kyc") || !p.MayUse("key:billing", "loginid") {
		t.Error("a provider without a grant: got allowed, want DenyProvider")
	}
}

func TestMatchSubject(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, subject string
		want             bool
	}{
		{"alice@example.com", "alice@example.com", true},
		{"alice@example.com", "alice@example.co", false},
		{"*", "", true},
		{"*", "x", true},
		{"*@b.com", "a@b.com", true},
		{"*@b.com", "@b.com", true},
		{"*@b.com", "a@b.comx", false},
		{"svc-*", "svc-a", true},
		{"svc-*", "svcx", false},
		{"a*a", "a", false}, // prefix and suffix may not overlap
		{"a*a", "aa", true},
	} {
		if got := matchSubject(tc.pattern, tc.subject); got != tc.want {
			t.Errorf("matchSubject(%q, %q): got %v, want %v", tc.pattern, tc.subject, got, tc.want)
		}
	}
}

func TestIdentify(t *testing.T) {
	t.Parallel()
	p := New([]config.Caller{
		{ID: "key:a", APIKeySHA256: hash("key-a")},
		{ID: "key:b", APIKeySHA256: hash("key-b")},
	})
	spiffe, _ := url.Parse("spiffe://mesh/ns/x/sa/y")
	withURI := &x509.Certificate{URIs: []*url.URL{spiffe}, Subject: pkix.Name{CommonName: "cn"}}
	withCN := &x509.Certificate{Subject: pkix.Name{CommonName: "billing"}}
	for _, tc := range []struct {
		name   string
		cert   *x509.Certificate
		key    string
		wantID string
		wantOK bool
	}{
		{"URI SAN wins over CN", withURI, "", "spiffe://mesh/ns/x/sa/y", true},
		{"CN without a URI SAN", withCN, "", "billing", true},
		{"certificate wins over key", withCN, "key-a", "billing", true},
		{"first key", nil, "key-a", "key:a", true},
		{"second key", nil, "key-b", "key:b", true},
		{"unknown key", nil, "key-c", "", false},
		{"key that is a hash", nil, hash("key-a"), "", false},
		{"nothing", nil, "", "", false},
		{"empty certificate", &x509.Certificate{}, "", "", false},
	} {
		id, ok := p.Identify(tc.cert, nil, tc.key)
		if id != tc.wantID || ok != tc.wantOK {
			t.Errorf("%s: got %q %v, want %q %v", tc.name, id, ok, tc.wantID, tc.wantOK)
		}
	}
}

// TestCertificateCannotClaimKeyCaller: a certificate whose CN names a
// caller that proves itself with an API key is not that caller.
func TestCertificateCannotClaimKeyCaller(t *testing.T) {
	t.Parallel()
	p := New([]config.Caller{{ID: "key:reporting", APIKeySHA256: hash("k")}})
	if id, ok := p.Identify(&x509.Certificate{Subject: pkix.Name{CommonName: "key:reporting"}}, nil, ""); ok {
		t.Errorf("got %q identified by a certificate, want not identified", id)
	}
	if id, ok := p.Identify(&x509.Certificate{Subject: pkix.Name{CommonName: "key:reporting"}}, nil, "k"); !ok || id != "key:reporting" {
		t.Errorf("with the key too: got %q %v, want key:reporting", id, ok)
	}
}
