#!/usr/bin/env bash
# bench/dns/run.sh: replns against NSD and PowerDNS (gpgsql), all serving one
# zone of $REPLS repls on loopback, measured with dnsperf.
#
# Every server runs pinned to CPU $SERVER_CPU; dnsperf and PostgreSQL share
# CPU $LOAD_CPU. Each server first gets one warming pass over the query mix,
# then:
#   1. a fixed offered load ($RATE queries/s for $DURATION s): CPU time per
#      answered query (server, and PostgreSQL's), as a ratio to NSD's; p99
#      latency; lost queries; database transactions;
#   2. saturation ($SAT_DURATION s, $SAT_CLIENTS x $SAT_OUTSTANDING in flight):
#      queries/s answered, lost;
#   3. replns only: a flood of random names at $RATE/s: database transactions.
# The mix: 80% A for existing repls, 10% AAAA, 5% names that do not exist (new
# ones in every pass), 5% apex SOA/NS, id.<zone> and _acme-challenge TXT.
#
# Needs root (PostgreSQL runs as the postgres user) and the Debian packages
# dnsperf nsd pdns-server pdns-backend-pgsql postgresql. Everything generated
# lives in a temporary folder that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

REPLS=${REPLS:-100000}
QUERIES=${QUERIES:-1000000}
RATE=${RATE:-20000}
DURATION=${DURATION:-15}
SAT_DURATION=${SAT_DURATION:-10}
SAT_CLIENTS=${SAT_CLIENTS:-10}
SAT_OUTSTANDING=${SAT_OUTSTANDING:-200}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SERVERS=${SERVERS:-"nsd replns pdns"}
PDNS_CACHE_TTL=${PDNS_CACHE_TTL:-3600}
REPLNS_FLAGS=${REPLNS_FLAGS:-} # more flags for replns, e.g. "-udp-readers 4"

for tool in dnsperf nsd pdns_server pdnsutil psql taskset; do
	command -v "$tool" >/dev/null || { echo "bench-dns: $tool is missing: apt-get install -y dnsperf nsd pdns-server pdns-backend-pgsql postgresql" >&2; exit 1; }
done
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
# xacts DB...: committed transactions in the databases.
xacts() {
	local list
	list=$(printf "'%s'," "$@")
	$PSQL -d postgres -Atc "SELECT coalesce(sum(xact_commit),0) FROM pg_stat_database WHERE datname IN (${list%,})"
}

# --- PostgreSQL, on the load CPU --------------------------------------------
PGPORT=$(free_port)
mkdir "$tmp/pg" && chown postgres "$tmp/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$tmp/pg" -A trust -U postgres >/dev/null
taskset -c "$LOAD_CPU" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pg/log" -w \
	-o "-p $PGPORT -k $tmp/pg -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=256MB -c max_connections=200" start >/dev/null
PGPID=$(head -1 "$tmp/pg/postmaster.pid")
PSQL="psql -h 127.0.0.1 -p $PGPORT -U postgres -q -v ON_ERROR_STOP=1"
for db in east west pdns; do $PSQL -d postgres -c "CREATE DATABASE $db"; done
DSN="postgres://postgres@127.0.0.1:$PGPORT"

log "generating $REPLS repls and the query files"
go run ./bench/dns/gen -out "$tmp" -repls "$REPLS" -queries "$QUERIES" \
	-east "$DSN/east?sslmode=disable" -west "$DSN/west?sslmode=disable"

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
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: repl.test
  zonefile: repl.test.zone
EOF

# --- PowerDNS with gpgsql -----------------------------------------------------
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

# start NAME: starts a server on a free port, pinned; sets PORT and PID.
start() {
	PORT=$(free_port)
	case $1 in
	replns)
		ADMIN=$(free_port)
		taskset -c "$SERVER_CPU" "$tmp/replns" -zone repl.test -registry "$tmp/clusters.yaml" -ns ns1.repl.test=127.0.0.1 \
			-listen "127.0.0.1:$PORT" -admin-listen "127.0.0.1:$ADMIN" -rrl-rate 0 -log-level warn $REPLNS_FLAGS >"$tmp/replns.log" 2>&1 &
		PID=$!
		for _ in $(seq 200); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
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
	for _ in $(seq 300); do
		dig +short +time=1 +tries=1 @127.0.0.1 -p "$PORT" repl.test SOA 2>/dev/null | grep -q hostmaster && return 0
		sleep 0.1
	done
	log "$1 did not start"; cat "$tmp/$1.log" >&2; exit 1
}

# perf ARGS...: runs dnsperf on the load CPU against $PORT; output in $tmp/perf.out.
perf() {
	taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "$PORT" "$@" >"$tmp/perf.out" 2>&1
}
# store_calls: replns's calls to its stores so far (route cache loads and
# index upkeep), from its metrics.
store_calls() {
	curl -s "http://127.0.0.1:$ADMIN/metrics" |
		awk '/^replns_cache_events_total\{.*event="load"/ || /^replns_index_store_queries_total/ {n += $NF} END {printf "%d", n}'
}
field() { awk -v k="$1" -F: '$1 ~ k {split($2, a, " "); print a[1]; exit}' "$tmp/perf.out"; }

declare -A CPU_US DB_US P99 LOST DONE XACT SAT_QPS SAT_LOST SAT_CPU
for s in $SERVERS; do
	log "$s: starting and warming"
	start "$s"
	dbs="pdns"; [ "$s" = replns ] && dbs="east west"
	perf -d "$tmp/warm.txt" -n 1 -c "$SAT_CLIENTS" -q "$SAT_OUTSTANDING"

	log "$s: $RATE queries/s for $DURATION s"
	sleep 1.5 # let PostgreSQL's statistics settle
	[ "$s" = replns ] && q0=$(store_calls)
	c0=$(ticks "$PID"); d0=$(ticks "$PGPID"); x0=$(xacts $dbs)
	perf -d "$tmp/fixed.txt" -l "$DURATION" -Q "$RATE" -c 4 -q 1000 -v
	c1=$(ticks "$PID"); d1=$(ticks "$PGPID")
	[ "$s" = replns ] && FIXED_CALLS=$(($(store_calls) - q0))
	sleep 1.5
	x1=$(xacts $dbs)
	DONE[$s]=$(field "Queries completed")
	LOST[$s]=$(field "Queries lost")
	CPU_US[$s]=$(echo "($c1 - $c0) * 1000000 / $TICK / ${DONE[$s]}" | bc -l)
	DB_US[$s]=$(echo "($d1 - $d0) * 1000000 / $TICK / ${DONE[$s]}" | bc -l)
	XACT[$s]=$((x1 - x0))
	P99[$s]=$(grep '^> ' "$tmp/perf.out" | awk '{print $NF}' | sort -g | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.3f", a[i]*1000}')

	log "$s: saturation for $SAT_DURATION s"
	c0=$(ticks "$PID")
	perf -d "$tmp/saturation.txt" -l "$SAT_DURATION" -c "$SAT_CLIENTS" -q "$SAT_OUTSTANDING"
	c1=$(ticks "$PID")
	SAT_QPS[$s]=$(field "Queries per second")
	SAT_LOST[$s]=$(field "Queries lost")
	SAT_CPU[$s]=$(echo "($c1 - $c0) * 1000000 / $TICK / $(field "Queries completed")" | bc -l)

	if [ "$s" = replns ]; then
		log "replns: a flood of random names, $RATE/s for $DURATION s"
		sleep 1.5
		x0=$(xacts east west); q0=$(store_calls)
		perf -d "$tmp/flood.txt" -l "$DURATION" -Q "$RATE" -c 4 -q 1000
		q1=$(store_calls)
		sleep 1.5
		x1=$(xacts east west)
		FLOOD_SENT=$(field "Queries completed")
		FLOOD_X=$((x1 - x0))
		FLOOD_CALLS=$((q1 - q0))
	fi
	kill "$PID"; wait "$PID" 2>/dev/null || true
done

echo
echo "DNS benchmark: $REPLS repls, $(nproc) CPUs, server pinned to CPU $SERVER_CPU, dnsperf and PostgreSQL on CPU $LOAD_CPU"
echo "left: fixed load, $RATE queries/s for $DURATION s; right: saturation, $SAT_CLIENTS clients x $SAT_OUTSTANDING outstanding for $SAT_DURATION s"
echo "cpu_us/query: the server's CPU time per answered query; db_us/query: PostgreSQL's; db_xacts: transactions its databases committed"
printf '%-8s %9s %6s %12s %6s %11s %7s %9s | %8s %8s %12s %6s\n' server answered lost "cpu_us/query" "x NSD" "db_us/query" "p99_ms" "db_xacts" \
	"sat_qps" sat_lost "cpu_us/query" "x NSD"
for s in $SERVERS; do
	ratio="-" sratio="-"
	[ -n "${CPU_US[nsd]:-}" ] && ratio=$(printf '%.2f' "$(echo "${CPU_US[$s]} / ${CPU_US[nsd]}" | bc -l)")
	[ -n "${SAT_CPU[nsd]:-}" ] && sratio=$(printf '%.2f' "$(echo "${SAT_CPU[$s]} / ${SAT_CPU[nsd]}" | bc -l)")
	printf '%-8s %9s %6s %12.1f %6s %11.1f %7s %9s | %8.0f %8s %12.1f %6s\n' "$s" "${DONE[$s]}" "${LOST[$s]}" "${CPU_US[$s]}" "$ratio" \
		"${DB_US[$s]}" "${P99[$s]}" "${XACT[$s]}" "${SAT_QPS[$s]}" "${SAT_LOST[$s]}" "${SAT_CPU[$s]}" "$sratio"
done
if [ -n "${FIXED_CALLS:-}" ]; then
	echo "replns at the fixed load: $FIXED_CALLS store calls for ${DONE[replns]} queries (challenge records are re-read every -cache-negative-ttl)"
fi
if [ -n "${FLOOD_SENT:-}" ]; then
	echo "replns random-name flood ($RATE/s for $DURATION s): $FLOOD_SENT answered; replns made $FLOOD_CALLS store calls;" \
		"the databases committed $FLOOD_X transactions ($(echo "$FLOOD_X / $DURATION" | bc -l | xargs printf '%.1f')/s, autovacuum included)"
fi
