# replproxy: build, lint, test and benchmark. `make help` lists the targets.

GO          ?= go
BIN         := $(CURDIR)/bin
STATICCHECK := $(BIN)/staticcheck
STATICCHECK_VERSION := v0.8.2
# How long `make test` fuzzes the name parser and the DNS handler (a
# bounded smoke run each; the seed corpora always run as part of `go test`).
FUZZTIME    ?= 20s
# Benchmarks to run and for how long each.
BENCH       ?= .
BENCHTIME   ?= 1s

.PHONY: help run run-postgres build test rules lint vet fmt-check staticcheck unit examples fuzz model bench bench-go bench-proxy bench-dns bench-dns-torture bench-tls bench-abuse bench-fanout bench-scale clean

help:
	@echo "make run     the demo: two clusters' proxies, replns and sample apps on loopback"
	@echo "make run-postgres  the same demo on two throw-away PostgreSQL servers"
	@echo "make build   build the binaries into bin/"
	@echo "make test    lint, then every test with -race (examples/ too), a short fuzz run, the move model (spin), make rules"
	@echo "make model   check the move protocol model/move.pml with spin"
	@echo "make rules   promtool on deploy/prometheus (checks, rule tests), systemd-analyze on deploy/systemd"
	@echo "             (needs: apt-get install -y prometheus; systemd)"
	@echo "make lint    gofmt (diff check), go vet, staticcheck"
	@echo "make bench   every benchmark: go test -bench, then the proxy comparison"
	@echo "             (bench-proxy needs: apt-get install -y nginx haproxy caddy nghttp2-client)"
	@echo "make bench-tls  TLS handshakes per CPU-second, replproxy vs nginx (needs nginx)"
	@echo "make bench-abuse  HTTP/2 rapid reset and a random-name flood against replproxy"
	@echo "make bench-fanout  one cluster's change feed to PROXIES replproxy and DNS replns at RATES changes/s"
	@echo "             (needs: postgresql; about 5 minutes)"
	@echo "make bench-dns  replns vs NSD and PowerDNS on 100,000 repls (REPLS=400000 for more)"
	@echo "             (as root; needs: dnsperf nsd pdns-server pdns-backend-pgsql postgresql)"
	@echo "make bench-scale  replns beside NSD at SIZES repls: start-up, memory, a batch of changes,"
	@echo "             a reconnect of the change feed (as root; SIZES=\"100000 1000000 10000000\")"
	@echo "make bench-dns-torture  water torture on 400,000 repls: floods of challenge, random"
	@echo "             and spread names beside a legitimate stream, replns vs NSD (as root)"

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

run: build
	$(BIN)/demo -bin $(BIN)

run-postgres: build
	$(BIN)/demo -bin $(BIN) -postgres

test: lint unit examples fuzz model rules

lint: fmt-check vet staticcheck

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; gofmt -d $$out; exit 1; fi

vet:
	$(GO) vet ./...

$(STATICCHECK):
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

# A module of its own that imports only the public test platform, as
# another project would (examples/platform/go.mod replaces this module).
examples:
	cd examples/platform && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseName$$' -fuzztime $(FUZZTIME) ./store/
	$(GO) test -run '^$$' -fuzz '^FuzzRespond$$' -fuzztime $(FUZZTIME) ./nameserver/

# The Prometheus rules (promtool check and the rule tests) and the systemd
# units (systemd-analyze verify on copies that run bin/, security --offline):
# see deploy/check.sh. Without promtool or systemd-analyze it skips, saying
# so, unless REPLPROXY_REQUIRE_TOOLS=1.
rules: build
	deploy/check.sh $(BIN)

# The move protocol, checked exhaustively with spin (about 2 minutes,
# 3 GiB): see model/move.pml. Needs: spin gcc.
model:
	model/check.sh

bench: bench-go bench-proxy bench-dns bench-dns-torture bench-tls bench-abuse

bench-go:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -benchtime $(BENCHTIME) -timeout 60m ./...

# replproxy against nginx, HAProxy, Caddy and a plain httputil.ReverseProxy
# at a fixed offered load; RATE, DURATION and WS tune it.
RATE     ?= 4000
DURATION ?= 10s
WS       ?= 10000
bench-proxy: build
	$(GO) run ./bench/proxy -replproxy $(BIN)/replproxy -rate $(RATE) -duration $(DURATION) -ws $(WS)

clean:
	rm -rf $(BIN)

bench-dns: build
	bench/dns/run.sh

bench-dns-torture: build
	bench/dns/torture.sh

# Repls in each round of bench-scale (bench/dns/scale.sh).
SIZES ?= 100000 1000000
bench-scale: build
	SIZES="$(SIZES)" bench/dns/scale.sh

bench-tls: build
	$(GO) run ./bench/tls -replproxy $(BIN)/replproxy

# The attacker and the backend on CPU 1, replproxy on CPU 0.
bench-abuse: build
	$(GO) build -o $(BIN)/abusebench ./bench/abuse
	taskset -c 1 $(BIN)/abusebench -replproxy $(BIN)/replproxy

# One cluster's change feed fanned out: PROXIES replproxy processes (one
# round each) and DNS replns on one throw-away PostgreSQL, a writer at each
# of RATES changes/s (FANOUT_BATCH changes a transaction) for
# FANOUT_DURATION; see bench/fanout.
PROXIES         ?= 10,25,50,100
DNS             ?= 5
RATES           ?= 500,1000,2000
FANOUT_BATCH    ?= 1
FANOUT_DURATION ?= 10s
bench-fanout: build
	$(GO) run ./bench/fanout -replproxy $(BIN)/replproxy -replns $(BIN)/replns -proxies $(PROXIES) -dns $(DNS) -rates $(RATES) -batch $(FANOUT_BATCH) -duration $(FANOUT_DURATION)
