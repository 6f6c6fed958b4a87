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
		if got := p.Allowed(tc.id, tc.provider, tc.scope, tc.isDefault); got != tc.want {
			t.Errorf("Allowed(%q, %q, %q, default=%v): got %v, want %v", tc.id, tc.provider, tc.scope, tc.isDefault, got, tc.want)
		}
	}
	if open := New(nil); open.Enforced() || !open.Allowed("", "kyc", "x", false) {
		t.Error("without callers: got a policy that refuses, want one that allows everyone")
	}
	if closed := New([]config.Caller{}); !closed.Enforced() || closed.Allowed("", "kyc", "", true) {
		t.Error("with an empty callers list: got a policy that allows, want one that refuses everyone")
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
