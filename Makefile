# tokenvend: `make run` starts the demo, `make test` runs every test.
GO       ?= go
BUF      := $(GO) tool -modfile=tools/go.mod buf

.PHONY: run test generate check-generated lint bench build

## run: start the service on its built-in demo (simulated upstreams, no secrets)
run:
	$(GO) run ./cmd/tokenvend demo

## test: every test, with the race detector
test:
	$(GO) test -race -count=1 ./...

## build: the binary, in bin/
build:
	CGO_ENABLED=0 $(GO) build -o bin/tokenvend ./cmd/tokenvend

## generate: regenerate gen/ from proto/ with the pinned local plugins
generate:
	$(BUF) generate

## check-generated: fail when gen/ is not what buf generates from proto/
check-generated: generate
	@git diff --exit-code --stat -- gen || (echo "gen/ is stale: run make generate and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain -- gen)" || (git status --porcelain -- gen; echo "gen/ has files not committed: run make generate and commit" >&2; exit 1)

## lint: buf lint, gofmt, go vet and the generated-code check
lint: check-generated
	$(BUF) lint
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))" || (gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'); echo "gofmt needed" >&2; exit 1)
	$(GO) vet ./...

## bench: Go benchmarks of the hot paths, allocations included
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
