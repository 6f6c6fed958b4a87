// Package seal encrypts what the shared store keeps, so that Redis never
// holds a credential in the clear. A value is sealed with AES-256-GCM (the
// standard library's, with a random nonce) into the envelope
//
//	"v1" | len(key id) | key id | nonce | ciphertext and tag
//
// bound to where it lives: the additional data is the envelope's header and
// the Redis key, so a value copied to another key, or relabelled with
// another key id, does not open. Several keys may be configured: the first
// seals, every one opens, so a key is rotated by adding the new one second,
// rolling out, moving it first, and removing the old one once no value it
// sealed can still be alive.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
)

// version starts every envelope.
const version = "v1"

// Errors of Open. Both mean the value cannot be used; a store treats
// either as a miss (log in again), never as an error for a caller.
var (
	// ErrUnknownKey: the value was sealed by a key that is not configured
	// (any more).
	ErrUnknownKey = errors.New("seal: sealed by a key that is not configured")
	// ErrCorrupt: the value is not an envelope, or it fails authentication
	// (tampered with, or moved from another key).
	ErrCorrupt = errors.New("seal: not a valid sealed value")
)

// Key is one configured AES-256 key, named by its id.
type Key struct {
	ID string
	// Secret is exactly 32 bytes.
	Secret []byte
}

// Sealer seals with its first key and opens with any of them. It is safe
// for concurrent use.
type Sealer struct {
	first string
	aeads map[string]cipher.AEAD
}

// New returns a Sealer for keys, the first of which seals. Ids must be
// unique, non-empty and at most 255 bytes; secrets exactly 32 bytes.
func New(keys []Key) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("seal: at least one key is required")
	}
	s := &Sealer{first: keys[0].ID, aeads: make(map[string]cipher.AEAD, len(keys))}
	for i, k := range keys {
		switch {
		case k.ID == "" || len(k.ID) > 255:
			return nil, fmt.Errorf("seal: key %d: the id must be 1 to 255 bytes", i)
		case len(k.Secret) != 32:
			return nil, fmt.Errorf("seal: key %q: must be 32 bytes, got %d", k.ID, len(k.Secret))
		case s.aeads[k.ID] != nil:
			return nil, fmt.Errorf("seal: key id %q is used twice", k.ID)
		}
		block, err := aes.NewCipher(k.Secret)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCMWithRandomNonce(block)
		if err != nil {
			return nil, err
		}
		s.aeads[k.ID] = aead
	}
	return s, nil
}

// Seal encrypts plain for the place named by where (the Redis key).
func (s *Sealer) Seal(plain []byte, where string) []byte {
	header := header(s.first)
	aead := s.aeads[s.first]
	out := make([]byte, len(header), len(header)+len(plain)+aead.Overhead())
	copy(out, header)
	return aead.Seal(out, nil, plain, additional(header, where))
}

// Open decrypts an envelope sealed for where. It fails with ErrUnknownKey
// or ErrCorrupt.
func (s *Sealer) Open(envelope []byte, where string) ([]byte, error) {
	if len(envelope) < len(version)+1 || string(envelope[:len(version)]) != version {
		return nil, ErrCorrupt
	}
	n := int(envelope[len(version)])
	end := len(version) + 1 + n
	if n == 0 || len(envelope) < end {
		return nil, ErrCorrupt
	}
	aead := s.aeads[string(envelope[len(version)+1:end])]
	if aead == nil {
		return nil, ErrUnknownKey
	}
	plain, err := aead.Open(nil, nil, envelope[end:], additional(envelope[:end], where))
	if err != nil {
		return nil, ErrCorrupt
	}
	return plain, nil
}

func header(id string) []byte {
	return append(append([]byte(version), byte(len(id))), id...)
}

// additional binds the header (version and key id) and the place.
func additional(header []byte, where string) []byte {
	return append(append([]byte(nil), header...), where...)
}
