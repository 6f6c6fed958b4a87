package auth

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenvend/tokenvend/internal/config"
)

const (
	billing = "spiffe://cluster.local/ns/x/sa/billing"
	self    = "spiffe://cluster.local/ns/tokenvend/sa/tokenvend"
)

func TestXFCCURI(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, header, want string
	}{
		{"Istio's element", `By=` + self + `;Hash=4a4b;Subject="";URI=` + billing, billing},
		{"URI only", "URI=" + billing, billing},
		{"key case does not matter", "uri=" + billing, billing},
		{"quoted URI", `URI="` + billing + `"`, billing},
		{"quoted subject with the separators and an escaped quote",
			`Hash=ab;Subject="CN=a\"b\",O=x;y=z";URI=` + billing + `;DNS=a.example;DNS=b.example`, billing},
		{"the last element counts: the caller's own comes first",
			"URI=spiffe://cluster.local/ns/x/sa/admin,By=" + self + ";URI=" + billing, billing},
		{"a backslash that escapes nothing stays", `Subject="CN=a\,b";URI=` + billing, billing},

		{"empty", "", ""},
		{"no URI in the last element", "URI=" + billing + ",By=" + self + ";Hash=ab", ""},
		{"empty URI", "By=" + self + ";URI=", ""},
		{"two URIs", "URI=" + billing + ";URI=spiffe://cluster.local/ns/x/sa/admin", ""},
		{"no key", "=x;URI=" + billing, ""},
		{"no value separator", "URI", ""},
		{"trailing ;", "URI=" + billing + ";", ""},
		{"trailing ,", "URI=" + billing + ",", ""},
		{"empty element", "URI=" + billing + ",,URI=" + billing, ""},
		{"space before the next pair", "By=" + self + "; URI=" + billing, ""},
		{"space in a bare value", "URI=spiffe://a b", ""},
		{"= in a bare value", "URI=spiffe://a=b", ""},
		{"quote in a bare value", `URI=spiffe://a"b`, ""},
		{"text after a closing quote", `Subject="x"y;URI=` + billing, ""},
		{"unterminated quote", `URI="` + billing, ""},
		// The caller opens a quote, hoping the sidecar's element ends it
		// and leaves the caller's URI last.
		{"a caller's open quote swallows the sidecar's element",
			`URI=spiffe://cluster.local/ns/x/sa/admin;Subject="` + `,By=` + self + `;Subject="";URI=` + billing, ""},
		{"escaped quote at the end", `URI="` + billing + `\"`, ""},
		{"non-ASCII in a bare value", "URI=spiffe://cluster.local/ns/x/sa/b\u00e9", ""},
		{"control byte", "URI=" + billing + "\x00", ""},
	} {
		got, err := xfccURI(tc.header)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("%s: xfccURI(%q): got %q %v, want %q", tc.name, tc.header, got, err, tc.want)
		}
	}
}

// FuzzXFCCURI: no value makes the parser panic, an accepted value holds
// the URI it names, and what came before the sidecar's element never
// changes what the sidecar said: after an accepted value, an appended
// element wins; before one, a prepended element changes nothing.
func FuzzXFCCURI(f *testing.F) {
	for _, s := range []string{
		"By=" + self + ";Hash=4a4b;Subject=\"\";URI=" + billing,
		"URI=a,URI=b", `Subject="a\"b";URI=x`, `URI="x`, "", ",", ";", "=", `"`, `\"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		uri, err := xfccURI(v)
		if err != nil {
			if uri != "" {
				t.Fatalf("xfccURI(%q): got %q with error %v", v, uri, err)
			}
			return
		}
		if uri == "" || (!strings.Contains(v, uri) && !strings.Contains(v, strings.ReplaceAll(uri, `"`, `\"`))) {
			t.Fatalf("xfccURI(%q): got %q, which the value does not hold", v, uri)
		}
		if got, err := xfccURI(v + ",By=" + self + ";URI=" + billing); got != billing {
			t.Fatalf("xfccURI(%q + the sidecar's element): got %q %v, want %q", v, got, err, billing)
		}
		if got, err := xfccURI("URI=" + billing + "," + v); got != uri {
			t.Fatalf("xfccURI(an element + %q): got %q %v, want %q", v, got, err, uri)
		}
	})
}

// TestMeshIdentity: the header identifies only in a mesh, only callers
// configured to prove themselves by certificate, and never over a
// certificate on the connection.
func TestMeshIdentity(t *testing.T) {
	t.Parallel()
	callers := []config.Caller{
		{ID: billing},
		{ID: "spiffe://cluster.local/ns/x/sa/reporting", APIKeySHA256: hash("k")},
	}
	plain, mesh := New(callers), New(callers).InMesh()
	xfcc := func(uri string) []string { return []string{"By=" + self + ";URI=" + uri} }
	u, _ := url.Parse("spiffe://cluster.local/ns/x/sa/direct")
	direct := &x509.Certificate{URIs: []*url.URL{u}, Subject: pkix.Name{CommonName: "direct"}}
	for _, tc := range []struct {
		name   string
		p      *Policy
		cert   *x509.Certificate
		xfcc   []string
		key    string
		wantID string
	}{
		{"mesh: a certificate caller", mesh, nil, xfcc(billing), "", billing},
		{"not a mesh: the header is ignored", plain, nil, xfcc(billing), "", ""},
		{"not a mesh: the header is ignored, the key identifies", plain, nil, xfcc(billing), "k", "spiffe://cluster.local/ns/x/sa/reporting"},
		{"mesh: an API-key caller's ID is not claimed by the header", mesh, nil, xfcc("spiffe://cluster.local/ns/x/sa/reporting"), "", ""},
		{"mesh: an API-key caller in the mesh still identifies by its key", mesh, nil, xfcc("spiffe://cluster.local/ns/x/sa/other"), "k", "spiffe://cluster.local/ns/x/sa/reporting"},
		{"mesh: an unlisted identity identifies nobody", mesh, nil, xfcc("spiffe://cluster.local/ns/x/sa/other"), "", ""},
		{"mesh: the certificate on the connection wins", mesh, direct, xfcc(billing), "", "spiffe://cluster.local/ns/x/sa/direct"},
		{"mesh: two headers identify nobody", mesh, nil, append(xfcc(billing), xfcc(billing)...), "", ""},
		{"mesh: a malformed header identifies nobody", mesh, nil, []string{"URI=" + billing + ";"}, "", ""},
		{"mesh: the header wins over a key", mesh, nil, xfcc(billing), "k", billing},
	} {
		id, ok := tc.p.Identify(tc.cert, tc.xfcc, tc.key)
		if id != tc.wantID || ok != (tc.wantID != "") {
			t.Errorf("%s: got %q %v, want %q", tc.name, id, ok, tc.wantID)
		}
	}
	if plain.mesh {
		t.Error("InMesh changed the policy it was called on")
	}
}
