package ibanerasim

import (
	"testing"
	"time"
)

// rfcSecret is the RFC 6238 appendix B SHA1 seed "12345678901234567890" in Base32.
const rfcSecret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"

func TestCodeRFC6238Vectors(t *testing.T) {
	t.Parallel()
	// Appendix B, SHA1 rows; the 8-digit TOTPs truncated to their last 6 digits, which is what
	// a 6-digit generator produces (both are the same binary value mod 10^n).
	tests := []struct {
		unix int64
		want string
	}{
		{59, "287082"},          // 94287082
		{1111111109, "081804"},  // 07081804
		{1111111111, "050471"},  // 14050471
		{1234567890, "005924"},  // 89005924
		{2000000000, "279037"},  // 69279037
		{20000000000, "353130"}, // 65353130
	}
	for _, tt := range tests {
		t.Run(time.Unix(tt.unix, 0).UTC().Format(time.RFC3339), func(t *testing.T) {
			t.Parallel()
			got, err := Code(rfcSecret, time.Unix(tt.unix, 0))
			if err != nil {
				t.Fatalf("Code: got error %v, want nil", err)
			}
			if got != tt.want {
				t.Errorf("Code(%d): got %q, want %q", tt.unix, got, tt.want)
			}
		})
	}
}

func TestCodeSecretForms(t *testing.T) {
	t.Parallel()
	at := time.Unix(1111111111, 0)
	// The RFC seed is 20 bytes, which Base32 encodes without padding; the 16-byte seed
	// "1234567890123456" needs six "=".
	seed16Padded := "GEZDGNBVGY3TQOJQGEZDGNBVGY======"
	wantPadded, err := Code(seed16Padded, at)
	if err != nil {
		t.Fatalf("Code(padded): got error %v, want nil", err)
	}
	tests := []struct {
		name, secret, want string
	}{
		{"lower case", "gezdgnbvgy3tqojqgezdgnbvgy3tqojq", "050471"},
		{"mixed case", "GezdGnbvGy3tqojqGEZDGNBVGY3TQOJQ", "050471"},
		{"surrounding space", "  " + rfcSecret + "\n", "050471"},
		{"padding left out", "GEZDGNBVGY3TQOJQGEZDGNBVGY", wantPadded},
		{"padding lower case", "gezdgnbvgy3tqojqgezdgnbvgy======", wantPadded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Code(tt.secret, at)
			if err != nil {
				t.Fatalf("Code: got error %v, want nil", err)
			}
			if got != tt.want {
				t.Errorf("Code(%q): got %q, want %q", tt.secret, got, tt.want)
			}
		})
	}
}

func TestCodeBadSecret(t *testing.T) {
	t.Parallel()
	for _, secret := range []string{"", "   ", "====", "GEZDGNBV1", "not base32!", "GEZ", "GEZDGN", "GEZ=====", "GE=ZDGNB"} {
		t.Run(secret, func(t *testing.T) {
			t.Parallel()
			if got, err := Code(secret, time.Unix(59, 0)); err == nil {
				t.Errorf("Code(%q): got %q and nil error, want an error", secret, got)
			}
		})
	}
}

func TestStepBoundaries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		unix int64
		want int64
	}{
		{0, 0}, {29, 0}, {30, 1}, {59, 1}, {60, 2}, {-1, -1}, {-30, -1}, {-31, -2},
	}
	for _, tt := range tests {
		if got := stepAt(time.Unix(tt.unix, 0)); got != tt.want {
			t.Errorf("stepAt(%d): got %d, want %d", tt.unix, got, tt.want)
		}
	}
	// A code changes exactly at the step boundary, not before.
	a, _ := Code(rfcSecret, time.Unix(1111111110, 0))
	b, _ := Code(rfcSecret, time.Unix(1111111139, 999_999_999))
	c, _ := Code(rfcSecret, time.Unix(1111111140, 0))
	if a != b {
		t.Errorf("codes within one step: got %q and %q, want equal", a, b)
	}
	if b == c {
		t.Errorf("codes across a step boundary: got %q twice, want different", b)
	}
}
