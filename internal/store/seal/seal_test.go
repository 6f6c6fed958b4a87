package seal_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tokenvend/tokenvend/internal/store/seal"
)

func key(id string, b byte) seal.Key { return seal.Key{ID: id, Secret: bytes.Repeat([]byte{b}, 32)} }

func mustNew(t *testing.T, keys ...seal.Key) *seal.Sealer {
	t.Helper()
	s, err := seal.New(keys)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

const (
	where = "{tokenvend:kyc:read:}:tok"
	plain = "access-token-Zq9 refresh-token-Xy1"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	s := mustNew(t, key("k1", 1))
	env := s.Seal([]byte(plain), where)
	if bytes.Contains(env, []byte("access-token")) {
		t.Fatalf("Seal: the envelope holds the plaintext")
	}
	if !bytes.HasPrefix(env, []byte("v1\x02k1")) {
		t.Errorf("Seal: got envelope starting %q, want v1, the id's length and the id", env[:5])
	}
	got, err := s.Open(env, where)
	if err != nil || string(got) != plain {
		t.Errorf("Open: got %q, %v; want %q, nil", got, err, plain)
	}
	if again := s.Seal([]byte(plain), where); bytes.Equal(again, env) {
		t.Errorf("Seal twice: same envelope, want a fresh nonce each time")
	}
}

// TestTamper flips every byte of an envelope in turn: none opens.
func TestTamper(t *testing.T) {
	t.Parallel()
	s := mustNew(t, key("k1", 1))
	env := s.Seal([]byte(plain), where)
	for i := range env {
		bad := bytes.Clone(env)
		bad[i] ^= 0x01
		if _, err := s.Open(bad, where); err == nil {
			t.Errorf("Open with byte %d flipped: got nil error, want a failure", i)
		}
	}
	for _, bad := range [][]byte{nil, []byte("v1"), []byte("v2\x02k1"), env[:len(env)-1], []byte("v1\x00")} {
		if _, err := s.Open(bad, where); !errors.Is(err, seal.ErrCorrupt) {
			t.Errorf("Open(%q): got %v, want ErrCorrupt", bad, err)
		}
	}
}

// TestMovedDoesNotOpen: a value copied to another Redis key is refused.
func TestMovedDoesNotOpen(t *testing.T) {
	t.Parallel()
	s := mustNew(t, key("k1", 1))
	env := s.Seal([]byte(plain), where)
	if _, err := s.Open(env, "{tokenvend:kyc:admin:}:tok"); !errors.Is(err, seal.ErrCorrupt) {
		t.Errorf("Open at another key: got %v, want ErrCorrupt", err)
	}
}

func TestWrongKey(t *testing.T) {
	t.Parallel()
	env := mustNew(t, key("k1", 1)).Seal([]byte(plain), where)
	// Same id, other secret: authentication fails.
	if _, err := mustNew(t, key("k1", 2)).Open(env, where); !errors.Is(err, seal.ErrCorrupt) {
		t.Errorf("Open with another secret under the same id: got %v, want ErrCorrupt", err)
	}
	// An id no longer configured: unknown, a miss for the store.
	if _, err := mustNew(t, key("k2", 1)).Open(env, where); !errors.Is(err, seal.ErrUnknownKey) {
		t.Errorf("Open with the sealing key removed: got %v, want ErrUnknownKey", err)
	}
	// Relabelled to another configured id with the same secret: the id is
	// authenticated too.
	both := mustNew(t, key("k1", 1), key("k9", 1))
	bad := bytes.Clone(env)
	bad[3], bad[4] = 'k', '9'
	if _, err := both.Open(bad, where); !errors.Is(err, seal.ErrCorrupt) {
		t.Errorf("Open relabelled to another id: got %v, want ErrCorrupt", err)
	}
}

// TestRotation walks the documented rotation: add the new key second, move
// it first, remove the old one.
func TestRotation(t *testing.T) {
	t.Parallel()
	old, next := key("2026-06", 1), key("2026-12", 2)
	byOld := mustNew(t, old).Seal([]byte(plain), where)
	added := mustNew(t, old, next)
	if got, err := added.Open(byOld, where); err != nil || string(got) != plain {
		t.Errorf("new key added second, opening the old value: got %q, %v", got, err)
	}
	stillOld := added.Seal([]byte(plain), where)
	moved := mustNew(t, next, old)
	byNext := moved.Seal([]byte(plain), where)
	for name, env := range map[string][]byte{"old": byOld, "sealed while added": stillOld, "new": byNext} {
		if got, err := moved.Open(env, where); err != nil || string(got) != plain {
			t.Errorf("new key first, opening the %s value: got %q, %v", name, got, err)
		}
	}
	// A replica still on the first config (old key only) during the
	// roll-out of the move cannot open values of the new key: a miss.
	if _, err := mustNew(t, old).Open(byNext, where); !errors.Is(err, seal.ErrUnknownKey) {
		t.Errorf("old-only replica opening a new value: got %v, want ErrUnknownKey", err)
	}
	removed := mustNew(t, next)
	if _, err := removed.Open(byOld, where); !errors.Is(err, seal.ErrUnknownKey) {
		t.Errorf("old key removed, opening the old value: got %v, want ErrUnknownKey", err)
	}
	if got, err := removed.Open(byNext, where); err != nil || string(got) != plain {
		t.Errorf("old key removed, opening the new value: got %q, %v", got, err)
	}
}

func TestNewRefuses(t *testing.T) {
	t.Parallel()
	for name, keys := range map[string][]seal.Key{
		"no keys":     nil,
		"short":       {{ID: "a", Secret: make([]byte, 16)}},
		"no id":       {{Secret: make([]byte, 32)}},
		"id twice":    {key("a", 1), key("a", 2)},
		"id too long": {{ID: string(bytes.Repeat([]byte("x"), 256)), Secret: make([]byte, 32)}},
	} {
		if _, err := seal.New(keys); err == nil {
			t.Errorf("New(%s): got nil error, want a refusal", name)
		}
	}
}
