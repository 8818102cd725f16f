# Developer and CI entry points. CI runs .ci/run, which ends in `make test`.

GO        ?= go
BIN       := bin/tandem
# Extra flags for the test targets, e.g. `make test TESTFLAGS=-v`.
TESTFLAGS ?=

# What `tandem version` and tandem_build_info report. A release sets
# VERSION (make build VERSION=v1.2.0); the defaults describe the checkout.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE      ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
VERSION_PKG := github.com/tandem-migrate/tandem/internal/version
LDFLAGS   := -X $(VERSION_PKG).version=$(VERSION) -X $(VERSION_PKG).commit=$(COMMIT) -X $(VERSION_PKG).date=$(DATE)
# The container image `make image` builds (needs a Docker engine).
IMAGE     ?= tandem:$(VERSION)

.PHONY: all build image test test-short bench bench-deps demo vet lint clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tandem

image:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) --build-arg DATE=$(DATE) -t $(IMAGE) .

# Integration tests start real throwaway PostgreSQL clusters (internal/pgcluster),
# hence the generous timeout. -count=1 because cached results would hide
# flakiness against a real server.
test:
	$(GO) test -count=1 -timeout 40m $(TESTFLAGS) ./...

# -short means "fewer rounds", not "no database": integration tests still run.
test-short:
	$(GO) test -short $(TESTFLAGS) ./...

# pgcopydb is what the backfill is compared with; installed when this is
# root on a Debian-like machine, otherwise the bench skips that column.
bench-deps:
	@command -v pgcopydb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y pgcopydb >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y pgcopydb >/dev/null 2>&1)); } || \
		echo "pgcopydb not installed (apt-get install pgcopydb); the backfill bench skips that column"

bench: bench-deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench/...

# Built, then run: `go run` exits 1 after any Ctrl-C whatever the program
# does, and make would then report the clean stop as an error.
demo:
	$(GO) build -o bin/demo ./cmd/demo
	GO=$(GO) bin/demo

vet:
	$(GO) vet ./...

lint: vet
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt -l reports unformatted files (run gofmt -w):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi

clean:
	rm -rf bin
