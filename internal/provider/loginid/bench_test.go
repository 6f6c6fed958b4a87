package loginid_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/provider/loginid"
	"github.com/tokenvend/tokenvend/internal/secret"
	"github.com/tokenvend/tokenvend/internal/token"
)

// BenchmarkMint is the whole per-call cost of the provider: a token minted,
// signed and wrapped as a token.Token with its Authorization header.
// Compare it with BenchmarkECDSASign, the signature alone: the difference
// is what the provider adds.
func BenchmarkMint(b *testing.B) {
	c, err := loginid.New(loginid.Config{
		PrivateKey: secret.Literal(pkcs8PEM(b, newKey(b, elliptic.P256()))),
		ClientID:   "0f6c1f3e-client",
		Scopes:     []string{"users.retrieve", "users.create"},
	}, time.Now)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	req := token.Request{Scope: "users.create", Subject: "alice@example.com"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Token(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkECDSASign is one bare ecdsa.Sign of a SHA-256 digest with the
// same kind of key, with crypto/rand (hedged, as golang-jwt signs): the
// floor under BenchmarkMint before it signed deterministically.
func BenchmarkECDSASign(b *testing.B) {
	key := newKey(b, elliptic.P256())
	digest := sha256.Sum256([]byte("eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0eXBlIjoidXNlcnMuY3JlYXRlIn0"))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ecdsa.Sign(rand.Reader, key, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkECDSASignDeterministic is the signature as Mint makes it
// (RFC 6979, no random source): the floor under BenchmarkMint.
func BenchmarkECDSASignDeterministic(b *testing.B) {
	key := newKey(b, elliptic.P256())
	digest := sha256.Sum256([]byte("eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0eXBlIjoidXNlcnMuY3JlYXRlIn0"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := key.Sign(nil, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}
