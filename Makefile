# tokenvend: `make run` starts the demo, `make test` runs every test.
GO       ?= go
BUF      := $(GO) tool -modfile=tools/go.mod buf

.PHONY: run run-replicas test generate check-generated check-deploy check-sims lint bench bench-scale bench-go build

## run: start the service on its built-in demo (simulated upstreams, no secrets)
run:
	$(GO) run ./cmd/tokenvend demo

## run-replicas: three replicas of the demo sharing one Redis (a redis-server started on
## 127.0.0.1:6390 when installed, else one already there); gRPC 9090-9092, HTTP 8080-8082
REDIS_DEMO_ADDR ?= 127.0.0.1:6390
run-replicas:
	@dir=$$(mktemp -d); pid=; \
	if command -v redis-server >/dev/null; then \
	  redis-server --port $(lastword $(subst :, ,$(REDIS_DEMO_ADDR))) --bind 127.0.0.1 --save '' --appendonly no --dir $$dir >$$dir/redis.log 2>&1 & pid=$$!; \
	  echo "redis-server on $(REDIS_DEMO_ADDR) (pid $$pid, log $$dir/redis.log)"; \
	else echo "redis-server is not installed (apt-get install redis-server): using $(REDIS_DEMO_ADDR) as it is"; fi; \
	trap '[ -n "$$pid" ] && kill $$pid' EXIT INT TERM; \
	$(GO) run ./cmd/tokenvend demo --replicas 3 --redis $(REDIS_DEMO_ADDR)

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

## check-deploy: render deploy/kubernetes with kustomize and deploy/helm with the Helm library,
## decode every object strictly into the Kubernetes API types, check the Deployment's promises
## and the Dockerfile, run `tokenvend check` on their configs, parse the alerting rules with
## Prometheus' rulefmt, and check the dashboard and rules against a running tokenvend's
## /metrics (deploy/ is a module of its own)
check-deploy:
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 ./...

## check-sims: fail when a simulator, or its tests, imports anything of the provider tree
## outside itself: a fake that shares its client's parsing or helpers proves nothing
check-sims:
	@fail=0; for sim in $$(ls -d internal/provider/*/*sim); do \
	  pkg=$$($(GO) list ./$$sim); \
	  bad=$$($(GO) list -deps -test ./$$sim | sed 's/ .*//; s/\.test$$//' | grep '/internal/provider/' | grep -v "^$$pkg$$" | sort -u); \
	  if [ -n "$$bad" ]; then echo "$$sim imports what it must not (it fakes its client, it must not share its code):" >&2; echo "$$bad" | sed 's/^/  /' >&2; fail=1; fi; \
	done; exit $$fail

## lint: buf lint, gofmt, go vet, the generated-code check, the simulators' import check, the deploy/ check, and the bench/ harness's own tests
lint: check-generated check-sims
	$(BUF) lint
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))" || (gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'); echo "gofmt needed" >&2; exit 1)
	$(GO) vet ./...
	$(MAKE) --no-print-directory check-deploy
	cd bench && $(GO) vet ./... && $(GO) test -count=1 ./...

## bench: build the server, run it on its demo and load it beside its own floor (health
## checks) in one run; prints one table. The harness is its own module (bench/), where
## ghz is pinned; BENCHFLAGS passes flags to it (cd bench && go run . -h lists them)
bench: build
	cd bench && $(GO) run . -bin ../bin/tokenvend $(BENCHFLAGS)

## bench-scale: how the cost grows (about 3 minutes): throughput and p99 at 1 to 1,000
## concurrent callers, memory and goroutines with 10,000 idle gRPC connections and with
## 10,000 cached keys, a cold start of 10,000 callers across 100 keys (bench/README.md)
bench-scale: build
	cd bench && $(GO) run . -bin ../bin/tokenvend -scale $(BENCHFLAGS)

## bench-go: Go benchmarks of the hot paths (cache hit; GetToken through the real
## service in process), allocations included
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...
