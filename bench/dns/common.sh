# bench/dns/common.sh: the setup shared by bench/dns/run.sh and
# bench/dns/torture.sh, sourced by them (not run): a throw-away PostgreSQL
# with pg_stat_statements, the generated zone of $REPLS repls as replns, NSD
# and PowerDNS read it, and helpers to start a server and measure it.
#
# Statements are counted with pg_stat_statements (track = top, track_utility
# on): every statement a client sends, counted when it completes, including
# BEGIN/COMMIT/LISTEN, excluding statements nested in functions and
# autovacuum's work. `stmts DB...` sums its calls over the databases named;
# the benchmarks take differences. pg_stat_statements_info.dealloc must stay
# 0 (no entry evicted, so no call lost); the benchmarks print it.

REPLS=${REPLS:-100000}
QUERIES=${QUERIES:-1000000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PDNS_CACHE_TTL=${PDNS_CACHE_TTL:-3600}
REPLNS_FLAGS=${REPLNS_FLAGS:-} # more flags for replns, e.g. "-udp-readers 4"
# Response rate limiting in replns and NSD: replies per second per client
# network (replns) or per source and response class (NSD); 0 turns it off.
RRL_RATE=${RRL_RATE:-0}
# NSD answers DNS cookies with COOKIES=1 (replns always does).
COOKIES=${COOKIES:-0}

for tool in dnsperf nsd psql taskset curl dig; do
	command -v "$tool" >/dev/null || { echo "bench-dns: $tool is missing: apt-get install -y dnsperf nsd pdns-server pdns-backend-pgsql postgresql curl bind9-dnsutils" >&2; exit 1; }
done
case " $SERVERS " in *" pdns "*)
	for tool in pdns_server pdnsutil; do
		command -v "$tool" >/dev/null || { echo "bench-dns: $tool is missing: apt-get install -y pdns-server pdns-backend-pgsql" >&2; exit 1; }
	done ;;
esac
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "bench-dns: PostgreSQL server binaries missing: apt-get install -y postgresql" >&2; exit 1; }
TICK=$(getconf CLK_TCK)

tmp=$(mktemp -d /tmp/bench-dns.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[ -f "$tmp/pg/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
log() { echo "bench-dns: $*" >&2; }
has() { case " $SERVERS " in *" $1 "*) return 0 ;; esac; return 1; }

# tree PID: PID and its descendants.
tree() {
	local p=$1 c
	echo "$p"
	for c in $(pgrep -P "$p" || true); do tree "$c"; done
}
# ticks PID...: user+system CPU ticks of the processes and their descendants.
ticks() {
	local sum=0 p f
	for p in $(for r in "$@"; do tree "$r"; done); do
		[ -r "/proc/$p/stat" ] || continue
		f=$(sed 's/^.*) //' "/proc/$p/stat")
		set -- $f
		sum=$((sum + ${12} + ${13}))
	done
	echo "$sum"
}
dblist() { local list; list=$(printf "'%s'," "$@"); echo "${list%,}"; }
# xacts DB...: committed transactions in the databases (pg_stat_database:
# a backend flushes its counts up to a second late while busy, and up to
# 10 s late once idle in PostgreSQL 15, so a phase's figure can hold some of
# the phase before; statements (stmts) have no such lag).
xacts() {
	[ $# -gt 0 ] || { echo 0; return; }
	$PSQL -d postgres -Atc "SELECT coalesce(sum(xact_commit),0) FROM pg_stat_database WHERE datname IN ($(dblist "$@"))"
}
# stmts DB...: statements completed in the databases (pg_stat_statements;
# counted as they complete).
stmts() {
	[ $# -gt 0 ] || { echo 0; return; }
	$PSQL -d postgres -Atc "SELECT coalesce(sum(s.calls),0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname IN ($(dblist "$@"))"
}
# top_stmts DB...: the statements with the most calls since the last
# pg_stat_statements_reset(), one a line.
top_stmts() {
	[ $# -gt 0 ] || { echo 0; return; }
	$PSQL -d postgres -Atc "SELECT s.calls || '  ' || d.datname || '  ' || left(regexp_replace(s.query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname IN ($(dblist "$@")) ORDER BY s.calls DESC LIMIT 4"
}
dealloc() { $PSQL -d postgres -Atc "SELECT dealloc FROM pg_stat_statements_info"; }
# dbs_of SERVER: the databases the server reads.
dbs_of() { case $1 in replns) echo "east west" ;; pdns) echo pdns ;; *) echo "" ;; esac; }

# --- PostgreSQL, on the load CPU --------------------------------------------
PGPORT=$(free_port)
mkdir "$tmp/pg" && chown postgres "$tmp/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$tmp/pg" -A trust -U postgres >/dev/null
taskset -c "$LOAD_CPU" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pg/log" -w \
	-o "-p $PGPORT -k $tmp/pg -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=256MB -c max_connections=200 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top -c pg_stat_statements.max=10000" start >/dev/null
PGPID=$(head -1 "$tmp/pg/postmaster.pid")
PSQL="psql -h 127.0.0.1 -p $PGPORT -U postgres -q -v ON_ERROR_STOP=1"
$PSQL -d postgres -c "CREATE EXTENSION pg_stat_statements"
for db in east west pdns; do $PSQL -d postgres -c "CREATE DATABASE $db"; done
DSN="postgres://postgres@127.0.0.1:$PGPORT"

log "generating $REPLS repls and the query files"
go run ./bench/dns/gen -out "$tmp" -repls "$REPLS" -queries "$QUERIES" \
	-east "$DSN/east?sslmode=disable" -west "$DSN/west?sslmode=disable" ${GEN_FLAGS:-}

# --- replns -------------------------------------------------------------------
go build -o "$tmp/replns" ./cmd/replns
cat >"$tmp/clusters.yaml" <<EOF
clusters:
  - name: east
    proxy_ipv4: [192.0.2.10]
    proxy_ipv6: ["2001:db8::10"]
    forward: 10.0.0.10:8443
    store: $DSN/east?sslmode=disable&pool_max_conns=16
  - name: west
    proxy_ipv4: [198.51.100.10]
    proxy_ipv6: ["2001:db8:1::10"]
    forward: 10.1.0.10:8443
    store: $DSN/west?sslmode=disable&pool_max_conns=16
EOF

# --- NSD ----------------------------------------------------------------------
mkdir "$tmp/nsd"
cat >"$tmp/nsd/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1
  port: PORT
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$tmp"
  database: ""
  zonelistfile: "$tmp/nsd/zone.list"
  xfrdfile: "$tmp/nsd/xfrd.state"
  xfrdir: "$tmp/nsd"
  pidfile: "$tmp/nsd/nsd.pid"
  logfile: "$tmp/nsd/nsd.log"
  verbosity: 0
  rrl-ratelimit: $RRL_RATE
  answer-cookie: $([ "$COOKIES" = 1 ] && echo yes || echo no)
remote-control:
  control-enable: no
zone:
  name: repl.test
  zonefile: repl.test.zone
EOF

# --- PowerDNS with gpgsql -----------------------------------------------------
if has pdns; then
	mkdir "$tmp/pdns"
	$PSQL -d pdns -f /usr/share/pdns-backend-pgsql/schema/schema.pgsql.sql >/dev/null
	$PSQL -d pdns -c "INSERT INTO domains (id, name, type) VALUES (1, 'repl.test', 'NATIVE')"
	$PSQL -d pdns -c "\\copy records (domain_id, name, type, content, ttl, prio, disabled, auth) FROM '$tmp/pdns-records.tsv'"
	cat >"$tmp/pdns/pdns.conf" <<EOF
launch=gpgsql
gpgsql-host=127.0.0.1
gpgsql-port=$PGPORT
gpgsql-dbname=pdns
gpgsql-user=postgres
gpgsql-dnssec=no
local-address=127.0.0.1
local-port=PORT
socket-dir=$tmp/pdns
cache-ttl=$PDNS_CACHE_TTL
negquery-cache-ttl=$PDNS_CACHE_TTL
query-cache-ttl=$PDNS_CACHE_TTL
disable-syslog=yes
loglevel=3
EOF
	log "rectifying the PowerDNS zone (empty non-terminals)"
	pdnsutil --config-dir="$tmp/pdns" rectify-zone repl.test >/dev/null
	$PSQL -d pdns -c "ANALYZE"
fi

# start NAME: starts a server on a free port, pinned; sets PORT and PID (and
# ADMIN for replns).
start() {
	PORT=$(free_port)
	case $1 in
	replns)
		ADMIN=$(free_port)
		taskset -c "$SERVER_CPU" "$tmp/replns" -zone repl.test -registry "$tmp/clusters.yaml" -ns ns1.repl.test=127.0.0.1 \
			-listen "127.0.0.1:$PORT" -admin-listen "127.0.0.1:$ADMIN" -rrl-rate "$RRL_RATE" -log-level warn $REPLNS_FLAGS >"$tmp/replns.log" 2>&1 &
		PID=$!
		for _ in $(seq 600); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
		;;
	nsd)
		sed -i "s/^  port: .*/  port: $PORT/" "$tmp/nsd/nsd.conf"
		taskset -c "$SERVER_CPU" nsd -d -c "$tmp/nsd/nsd.conf" >"$tmp/nsd.log" 2>&1 &
		PID=$!
		;;
	pdns)
		sed -i "s/^local-port=.*/local-port=$PORT/" "$tmp/pdns/pdns.conf"
		taskset -c "$SERVER_CPU" pdns_server --config-dir="$tmp/pdns" --daemon=no --guardian=no >"$tmp/pdns.log" 2>&1 &
		PID=$!
		;;
	esac
	pids+=("$PID")
	for _ in $(seq 1200); do
		dig +short +time=1 +tries=1 @127.0.0.1 -p "$PORT" repl.test SOA 2>/dev/null | grep -q hostmaster && return 0
		kill -0 "$PID" 2>/dev/null || break
		sleep 0.1
	done
	log "$1 did not start"; cat "$tmp/$1.log" >&2; exit 1
}
# stop: stops the server start started.
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }

# perf ARGS...: runs dnsperf on the load CPU against $PORT; output in
# ${PERF_OUT:-$tmp/perf.out}.
perf() {
	taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "$PORT" "$@" >"${PERF_OUT:-$tmp/perf.out}" 2>&1
}
# store_calls: replns's calls to its stores so far (route cache loads and
# index upkeep), from its metrics (0 if it has no such metrics).
store_calls() {
	curl -s "http://127.0.0.1:$ADMIN/metrics" |
		awk '/^replns_(route_)?cache_events_total\{.*event="load"/ || /^replns_index_store_queries_total/ {n += $NF} END {printf "%d", n}'
}
# server_cookie: a DNS cookie (client and server parts, hex) the server at
# $PORT made for 127.0.0.1, for dnsperf -E 10:COOKIE; empty when it sends none.
server_cookie() {
	dig +time=1 +tries=3 +cookie=0102030405060708 @127.0.0.1 -p "$PORT" repl.test SOA |
		awk '/; COOKIE: / {print $3; exit}'
}
# field KEY [FILE]: the first number after "KEY:" in dnsperf's output.
field() { awk -v k="$1" -F: '$1 ~ k {split($2, a, " "); print a[1]; exit}' "${2:-$tmp/perf.out}"; }
# ratio A B [FORMAT]: A/B, or - when either is empty or B is 0.
ratio() {
	if [ -z "${1:-}" ] || [ -z "${2:-}" ] || [ "$(echo "$2 == 0" | bc -l)" = 1 ]; then echo -; return; fi
	printf "${3:-%.2f}" "$(echo "$1 / $2" | bc -l)"
}
