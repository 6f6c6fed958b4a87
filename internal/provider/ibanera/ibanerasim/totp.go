package ibanerasim

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The TOTP parameters Ibanera uses: RFC 6238 defaults.
const (
	stepSeconds = 30
	codeDigits  = 6
	codeModulus = 1_000_000 // 10^codeDigits
)

// The TOTP code is written by hand here, not taken from github.com/pquerna/otp, on purpose:
// tokenvend's client uses that library, and a simulator that shared it would agree with any bug
// in it instead of catching it.

// Code returns the 6-digit TOTP code (RFC 6238: HMAC-SHA1, 30-second steps from the Unix epoch)
// for a Base32 secret at time t. The secret may be upper or lower case, with or without "="
// padding. Tests use it to compute the otp header of the protected endpoint independently of
// tokenvend's client.
func Code(secret string, t time.Time) (string, error) {
	key, err := decodeSecret(secret)
	if err != nil {
		return "", err
	}
	return hotp(key, stepAt(t)), nil
}

// decodeSecret decodes a Base32 shared secret the way authenticator apps accept it: case does
// not matter and the padding may be left out.
func decodeSecret(secret string) ([]byte, error) {
	s := strings.TrimRight(strings.ToUpper(strings.TrimSpace(secret)), "=")
	if s == "" {
		return nil, errors.New("ibanerasim: empty TOTP secret")
	}
	// Restore the padding rather than decode without it: Go's unpadded decoder accepts
	// impossible lengths (such as 3 characters) and silently drops their bits.
	if n := len(s) % 8; n != 0 {
		s += strings.Repeat("=", 8-n)
	}
	key, err := base32.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("ibanerasim: TOTP secret is not Base32: %w", err)
	}
	return key, nil
}

// stepAt returns the RFC 6238 time-step counter T = floor(unix / 30).
func stepAt(t time.Time) int64 {
	u := t.Unix()
	s := u / stepSeconds
	if u < 0 && u%stepSeconds != 0 {
		s-- // floor, not truncation, before the epoch
	}
	return s
}

// hotp is RFC 4226 HOTP with HMAC-SHA1 and dynamic truncation to codeDigits digits.
func hotp(key []byte, counter int64) string {
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], uint64(counter))
	mac := hmac.New(sha1.New, key)
	mac.Write(msg[:])
	sum := mac.Sum(nil)
	off := sum[len(sum)-1] & 0x0f
	bin := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	return fmt.Sprintf("%0*d", codeDigits, bin%codeModulus)
}

// validCodeFormat reports whether otp is exactly codeDigits ASCII digits.
func validCodeFormat(otp string) bool {
	if len(otp) != codeDigits {
		return false
	}
	for i := 0; i < len(otp); i++ {
		if otp[i] < '0' || otp[i] > '9' {
			return false
		}
	}
	return true
}

// constantTimeEqual compares two secrets without leaking where they differ through timing.
func constantTimeEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
