package main

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tokenvend/tokenvend/internal/app"
	"github.com/tokenvend/tokenvend/internal/config"
)

// watchEvery is how often --watch-config reads the config file.
const watchEvery = time.Second

// reloader reloads a running service's config file on SIGHUP and, when
// watching, whenever the file's content changes. The content is hashed,
// not the file's time or inode looked at: a Kubernetes ConfigMap volume
// swaps a ..data symlink, so the path resolves to a new file whose time
// says nothing, and an editor may rewrite a file without changing it.
type reloader struct {
	path  string
	watch bool
	hup   chan os.Signal
	// sum is the hash of the content last loaded, or tried: a config that
	// was refused is not tried again until it changes.
	sum [sha256.Size]byte
}

// newReloader starts catching SIGHUP, whose default would end the
// process, and remembers the file's content as loaded at start. Call it
// before the config is loaded: a change in between is then reloaded at
// the first look.
func newReloader(path string, watch bool) *reloader {
	r := &reloader{path: path, watch: watch, hup: make(chan os.Signal, 1)}
	signal.Notify(r.hup, syscall.SIGHUP)
	r.sum, _ = r.read()
	return r
}

// stop stops catching SIGHUP.
func (r *reloader) stop() { signal.Stop(r.hup) }

// read returns the hash of the file's content, and a load of that very
// content.
func (r *reloader) read() ([sha256.Size]byte, func() (*config.Config, error)) {
	data, err := os.ReadFile(r.path)
	if err != nil {
		return sha256.Sum256([]byte("unreadable: " + err.Error())), func() (*config.Config, error) { return nil, err }
	}
	return sha256.Sum256(data), func() (*config.Config, error) { return config.Parse(data) }
}

// run reloads a until ctx ends. A.Reload logs each outcome.
func (r *reloader) run(ctx context.Context, a *app.App, log *slog.Logger) {
	var tick <-chan time.Time
	if r.watch {
		t := time.NewTicker(watchEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.hup:
			sum, load := r.read()
			r.sum = sum
			log.Info("config reload", "cause", "SIGHUP", "config", r.path)
			_ = a.Reload(load)
		case <-tick:
			sum, load := r.read()
			if sum == r.sum {
				continue
			}
			r.sum = sum
			log.Info("config reload", "cause", "the file changed", "config", r.path)
			_ = a.Reload(load)
		}
	}
}
