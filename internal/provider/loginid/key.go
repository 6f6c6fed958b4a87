package loginid

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
)

// ParsePrivateKey reads an API credential's private key: a PEM P-256 key,
// PKCS#8 ("BEGIN PRIVATE KEY", LoginID's current docs) or SEC1 ("BEGIN EC
// PRIVATE KEY", older ones). LoginID's dashboard hands the key out as ONE
// line with literal `\n` for the newlines, the way it must be put in an
// environment variable, so a literal `\n` is read as a newline; real
// newlines and CRLF work too. An "EC PARAMETERS" block before the key (what
// `openssl ecparam -genkey` writes) is skipped.
//
// Its errors say what is wrong with the key in words of their own and
// never quote the input: the input is a secret.
func ParsePrivateKey(s string) (*ecdsa.PrivateKey, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, `\n`) {
		s = strings.ReplaceAll(strings.ReplaceAll(s, `\r\n`, "\n"), `\n`, "\n")
	}
	rest := []byte(s)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("not a PEM private key: want -----BEGIN PRIVATE KEY----- (PKCS#8) or -----BEGIN EC PRIVATE KEY----- (SEC1)")
		}
		switch block.Type {
		case "EC PARAMETERS":
			continue
		case "PRIVATE KEY", "EC PRIVATE KEY":
			return parseKeyBlock(block.Bytes)
		case "RSA PRIVATE KEY":
			return nil, errors.New("not a P-256 key: it is an RSA key, and LoginID service tokens are ES256")
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the key is encrypted: give the unencrypted PKCS#8 or SEC1 key")
		case "PUBLIC KEY", "EC PUBLIC KEY":
			return nil, errors.New("this is a public key: the private key of the API credential is needed")
		default:
			return nil, errors.New("not a PEM private key: want -----BEGIN PRIVATE KEY----- (PKCS#8) or -----BEGIN EC PRIVATE KEY----- (SEC1)")
		}
	}
}

// parseKeyBlock parses the DER of a key block. A block labelled with the
// other format is still read, as golang-jwt's ParseECPrivateKeyFromPEM
// does: the label is often wrong in keys copied between tools.
func parseKeyBlock(der []byte) (*ecdsa.PrivateKey, error) {
	var key any
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		key = k
	} else if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		key = k
	} else {
		// x509's errors can quote ASN.1 details of the input: they are
		// not passed on.
		return nil, errors.New("not a P-256 key: the key is malformed or on an unsupported curve")
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, errors.New("not a P-256 key: it is on curve " + k.Curve.Params().Name + ", and LoginID service tokens are ES256")
		}
		return k, nil
	case *rsa.PrivateKey:
		return nil, errors.New("not a P-256 key: it is an RSA key, and LoginID service tokens are ES256")
	default:
		return nil, errors.New("not a P-256 key: it is another kind of key, and LoginID service tokens are ES256")
	}
}
