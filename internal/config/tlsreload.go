package config

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"log/slog"
	"sync"
	"time"
)

// ReloadInterval is the least time between two looks at the TLS files:
// the first handshake after it reads them again.
const ReloadInterval = 5 * time.Second

// Reloader serves the certificate, key and client CA of server.tls, and
// reads them again when their contents change. cert-manager and the SPIFFE
// helpers rewrite these files in place (a Kubernetes Secret mount swaps a
// ..data symlink, which reading follows), and the servers must pick up the
// new pair without a restart and without dropping the connections they
// have: the files only ever matter to a new handshake.
//
// It compares contents, not modification times: file times tick coarsely
// (a few milliseconds), and a new certificate often has the old one's
// size. Three small files every few seconds cost nothing.
type Reloader struct {
	files TLS
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	next    time.Time // when the files are next looked at
	seen    [sha256.Size]byte
	current *tls.Config
}

// Reloading loads the TLS files as LoadTLS does, failing the same way, and
// returns a Reloader that serves them and watches them for changes. now is
// the clock that spaces the looks (time.Now when nil).
func (t TLS) Reloading(log *slog.Logger, now func() time.Time) (*Reloader, error) {
	if now == nil {
		now = time.Now
	}
	f, err := t.read()
	if err != nil {
		return nil, err
	}
	cfg, err := t.parse(f)
	if err != nil {
		return nil, err
	}
	return &Reloader{files: t, log: log, now: now, next: now().Add(ReloadInterval), seen: digest(f, nil), current: cfg}, nil
}

// Config is the servers' TLS configuration. Each handshake takes the
// current certificate and client CA pool (GetConfigForClient), so a new
// pair serves new connections while open ones keep theirs.
func (r *Reloader) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.config(), nil
		},
	}
}

// config returns the current configuration, first reading the files again
// if ReloadInterval has passed since the last look. Files that changed but
// do not load (half written, cert and key that do not match, one missing)
// leave the old pair serving, with one warning, until they change again.
func (r *Reloader) config() *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Before(r.next) {
		return r.current
	}
	r.next = now.Add(ReloadInterval)
	f, err := r.files.read()
	sum := digest(f, err)
	if sum == r.seen {
		return r.current
	}
	r.seen = sum
	var cfg *tls.Config
	if err == nil {
		cfg, err = r.files.parse(f)
	}
	if err != nil {
		r.log.Warn("TLS files changed but do not load; still serving the previous certificate", "error", err.Error())
		return r.current
	}
	r.current = cfg
	if leaf := cfg.Certificates[0].Leaf; leaf != nil {
		r.log.Info("TLS certificate reloaded", "not_after", leaf.NotAfter)
	} else {
		r.log.Info("TLS certificate reloaded")
	}
	return cfg
}

// digest sums what a look at the files found: their contents, or the
// error that stopped the reading. The key goes into a hash only, never
// into a log.
func digest(f tlsFiles, err error) [sha256.Size]byte {
	if err != nil {
		return sha256.Sum256([]byte("error: " + err.Error()))
	}
	h := sha256.New()
	for _, part := range [][]byte{f.cert, f.key, f.clientCA} {
		// Length-prefixed, so no two splits of the same bytes sum alike.
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(part))))
		h.Write(part)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}
