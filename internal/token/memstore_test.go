package token_test

import (
	"testing"

	"github.com/tokenvend/tokenvend/internal/token"
	"github.com/tokenvend/tokenvend/internal/token/storetest"
)

// TestMemoryStore runs the store conformance tests on the reference
// store: one process, so both "replicas" are the same store.
func TestMemoryStore(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) (a, b storetest.Shared) {
		m := token.NewMemoryStore(nil)
		return m, m
	})
}
