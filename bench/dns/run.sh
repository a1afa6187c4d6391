#!/usr/bin/env bash
# bench/dns/run.sh: replns against NSD and PowerDNS (gpgsql), all serving one
# zone of $REPLS repls on loopback, measured with dnsperf.
#
# Every server runs pinned to CPU $SERVER_CPU; dnsperf and PostgreSQL share
# CPU $LOAD_CPU. Each server first gets one warming pass over the query mix,
# then:
#   1. a fixed offered load ($RATE queries/s for $DURATION s): CPU time per
#      answered query (server, and PostgreSQL's), as a ratio to NSD's; p99
#      latency; lost queries; database transactions and statements (the
#      statements/s of this phase are the steady state: it follows the
#      warming pass);
#   2. saturation ($SAT_DURATION s, $SAT_CLIENTS x $SAT_OUTSTANDING in flight):
#      queries/s answered, as a ratio to NSD's; lost; statements/s;
#   3. replns only: a flood of random names at $RATE/s: database transactions
#      and statements.
# Statements are counted with pg_stat_statements: see bench/dns/common.sh.
# SERVERS picks the servers (default "nsd replns pdns"); NSD's figures are
# the yardstick, so keep it in.
# The mix: 80% A for existing repls, 10% AAAA, 5% names that do not exist (new
# ones in every pass), 5% apex SOA/NS, id.<zone> and _acme-challenge TXT.
#
# Needs root (PostgreSQL runs as the postgres user) and the Debian packages
# dnsperf nsd pdns-server pdns-backend-pgsql postgresql. Everything generated
# lives in a temporary folder that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${RATE:-20000}
# The fixed load lasts longer than replns's -cache-ttl (1m) after the
# warming pass, so its statements/s include the routes re-read as they
# expire: the steady state. A 15 s phase right after warming read 830 to
# 9,600 statements/s over 400,000 repls depending on how long warming took.
DURATION=${DURATION:-75}
SAT_DURATION=${SAT_DURATION:-10}
# PERF=1: sample each server with perf record during the fixed load and
# print where its CPU time went (bench/perfgroup).
PERF=${PERF:-}
SAT_CLIENTS=${SAT_CLIENTS:-10}
SAT_OUTSTANDING=${SAT_OUTSTANDING:-200}
SERVERS=${SERVERS:-"nsd replns pdns"}
# As in production (say what each costs by turning it off): response rate
# limiting on in replns and NSD (RRL_RATE=0: off), at a rate one loopback
# client does not reach, so every reply pays for the accounting and none is
# dropped; DNS cookies answered (COOKIES=0: no query carries one), half of
# the UDP queries carrying a full cookie the server made (which in replns
# passes the rate limit); and TCP_SHARE % of the fixed load over TCP
# (dnsperf -m tcp: 4 connections, many queries each; 0: UDP only).
RRL_RATE=${RRL_RATE:-1000000}
COOKIES=${COOKIES:-1}
TCP_SHARE=${TCP_SHARE:-10}
# The setup (PostgreSQL, the zone, the servers' configuration) and helpers.
. bench/dns/common.sh

# mix FILE [RATE SECONDS]: the load from FILE at RATE queries/s for SECONDS
# (no RATE: saturation for $SAT_DURATION s), split over UDP with cookies,
# UDP without, and TCP, run at once on the load CPU; outputs in
# $tmp/mix.*.out, summed by mixed.
mix() {
	local file=$1 rate=${2:-} secs=${3:-$SAT_DURATION} cookie="" ppids=() udp=$((100 - TCP_SHARE)) parts p
	rm -f "$tmp"/mix.*.out
	if [ "$COOKIES" = 1 ]; then
		cookie=$(server_cookie)
		[ -n "$cookie" ] || { log "$s sent no DNS cookie"; exit 1; }
		parts="cookie plain"
	else
		parts="plain"
	fi
	[ "$TCP_SHARE" -gt 0 ] && parts="$parts tcp"
	local n_udp
	n_udp=$(echo "$parts" | wc -w)
	[ "$TCP_SHARE" -gt 0 ] && n_udp=$((n_udp - 1))
	for p in $parts; do
		local args=(-d "$tmp/$file" -l "$secs")
		case $p in
		cookie) args+=(-E "10:$cookie") ;;
		tcp) args+=(-m tcp) ;;
		esac
		if [ -n "$rate" ]; then
			if [ "$p" = tcp ]; then args+=(-Q $((rate * TCP_SHARE / 100)) -c 4 -q 100)
			else args+=(-Q $((rate * udp / 100 / n_udp)) -c 4 -q 1000); fi
			args+=(-v)
		else
			if [ "$p" = tcp ]; then args+=(-c 4 -q 20)
			else args+=(-c $((SAT_CLIENTS / n_udp)) -q "$SAT_OUTSTANDING"); fi
		fi
		PERF_OUT="$tmp/mix.$p.out" perf "${args[@]}" &
		ppids+=($!)
	done
	for p in "${ppids[@]}"; do wait "$p"; done
}
# mixed KEY: the sum over mix's parts of dnsperf's figure KEY.
mixed() {
	local f sum=0
	for f in "$tmp"/mix.*.out; do sum=$(echo "$sum + $(field "$1" "$f")" | bc -l); done
	echo "$sum"
}

declare -A CPU_US DB_US P99 LOST DONE XACT STMT SAT_QPS SAT_LOST SAT_CPU SAT_STMT PROFILE TCP_DONE SAT_TCP
for s in $SERVERS; do
	log "$s: starting and warming"
	start "$s"
	dbs=$(dbs_of "$s")
	perf -d "$tmp/warm.txt" -n 1 -c "$SAT_CLIENTS" -q "$SAT_OUTSTANDING"

	log "$s: $RATE queries/s for $DURATION s"
	sleep 1.5 # let PostgreSQL's statistics settle
	[ "$s" = replns ] && q0=$(store_calls)
	c0=$(ticks "$PID"); d0=$(ticks "$PGPID"); x0=$(xacts $dbs); s0=$(stmts $dbs)
	if [ "$PERF" = 1 ]; then # where the server's time goes (perf record; the fixed load's CPU figure then includes its cost)
		command perf record -q -F 999 -g -o "$tmp/$s.perf.data" -p "$(tree "$PID" | paste -sd, -)" &
		perfpid=$!
		sleep 0.3
	fi
	mix fixed.txt "$RATE" "$DURATION"
	c1=$(ticks "$PID"); d1=$(ticks "$PGPID"); s1=$(stmts $dbs)
	if [ "$PERF" = 1 ]; then
		kill -INT "$perfpid" && wait "$perfpid" || true
		PROFILE[$s]=$(go run ./bench/perfgroup -title "where $s's CPU time went at $RATE queries/s (perf record, self time):" "$tmp/$s.perf.data")
	fi
	[ "$s" = replns ] && FIXED_CALLS=$(($(store_calls) - q0))
	sleep 1.5
	x1=$(xacts $dbs)
	DONE[$s]=$(mixed "Queries completed")
	LOST[$s]=$(mixed "Queries lost")
	TCP_DONE[$s]=$( [ -f "$tmp/mix.tcp.out" ] && field "Queries completed" "$tmp/mix.tcp.out" || echo 0)
	CPU_US[$s]=$(echo "($c1 - $c0) * 1000000 / $TICK / ${DONE[$s]}" | bc -l)
	DB_US[$s]=$(echo "($d1 - $d0) * 1000000 / $TICK / ${DONE[$s]}" | bc -l)
	XACT[$s]=$((x1 - x0))
	STMT[$s]=$(echo "($s1 - $s0) / $DURATION" | bc -l)
	P99[$s]=$(cat "$tmp"/mix.*.out | grep '^> ' | awk '{print $NF}' | sort -g | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.3f", a[i]*1000}')

	log "$s: saturation for $SAT_DURATION s"
	c0=$(ticks "$PID"); s0=$(stmts $dbs)
	mix saturation.txt
	c1=$(ticks "$PID"); s1=$(stmts $dbs)
	SAT_STMT[$s]=$(echo "($s1 - $s0) / $SAT_DURATION" | bc -l)
	SAT_QPS[$s]=$(mixed "Queries per second")
	SAT_LOST[$s]=$(mixed "Queries lost")
	SAT_CPU[$s]=$(echo "($c1 - $c0) * 1000000 / $TICK / $(mixed "Queries completed")" | bc -l)
	SAT_TCP[$s]=$( [ -f "$tmp/mix.tcp.out" ] && echo "100 * $(field "Queries completed" "$tmp/mix.tcp.out") / $(mixed "Queries completed")" | bc -l || echo 0)

	if [ "$s" = replns ]; then
		log "replns: a flood of random names, $RATE/s for $DURATION s"
		sleep 1.5
		x0=$(xacts east west); q0=$(store_calls); s0=$(stmts east west)
		perf -d "$tmp/flood.txt" -l "$DURATION" -Q "$RATE" -c 4 -q 1000
		q1=$(store_calls); s1=$(stmts east west)
		FLOOD_STMT=$((s1 - s0))
		sleep 1.5
		x1=$(xacts east west)
		FLOOD_SENT=$(field "Queries completed")
		FLOOD_X=$((x1 - x0))
		FLOOD_CALLS=$((q1 - q0))
	fi
	stop
done

echo
echo "DNS benchmark: $REPLS repls, $(nproc) CPUs, server pinned to CPU $SERVER_CPU, dnsperf and PostgreSQL on CPU $LOAD_CPU"
echo "left: fixed load, $RATE queries/s for $DURATION s; right: saturation, $SAT_CLIENTS clients x $SAT_OUTSTANDING outstanding for $SAT_DURATION s"
echo "mix: RRL_RATE=$RRL_RATE (0: rate limiting off), COOKIES=$COOKIES (1: half the UDP queries carry a server cookie), TCP_SHARE=$TCP_SHARE % of the fixed load over TCP"
echo "cpu_us/query: the server's CPU time per answered query; db_us/query: PostgreSQL's; db_xacts: transactions its databases committed;"
echo "stmt/s: statements its databases completed per second (pg_stat_statements); x NSD: ratios to NSD's figure in this run"
printf '%-8s %9s %6s %12s %6s %11s %7s %9s %9s | %8s %6s %8s %12s %6s %9s\n' server answered lost "cpu_us/query" "x NSD" "db_us/query" "p99_ms" "db_xacts" "stmt/s" \
	"sat_qps" "x NSD" sat_lost "cpu_us/query" "x NSD" "stmt/s"
for s in $SERVERS; do
	stmt="-" sstmt="-"
	[ -n "$(dbs_of "$s")" ] && stmt=$(printf '%.1f' "${STMT[$s]}") && sstmt=$(printf '%.1f' "${SAT_STMT[$s]}")
	printf '%-8s %9s %6s %12.1f %6s %11.1f %7s %9s %9s | %8.0f %6s %8s %12.1f %6s %9s\n' "$s" "${DONE[$s]}" "${LOST[$s]}" "${CPU_US[$s]}" "$(ratio "${CPU_US[$s]}" "${CPU_US[nsd]:-}")" \
		"${DB_US[$s]}" "${P99[$s]}" "${XACT[$s]}" "$stmt" "${SAT_QPS[$s]}" "$(ratio "${SAT_QPS[$s]}" "${SAT_QPS[nsd]:-}")" "${SAT_LOST[$s]}" \
		"${SAT_CPU[$s]}" "$(ratio "${SAT_CPU[$s]}" "${SAT_CPU[nsd]:-}")" "$sstmt"
done
for s in $SERVERS; do
	[ "$TCP_SHARE" -gt 0 ] && echo "$s over TCP: ${TCP_DONE[$s]} queries at the fixed load; $(printf '%.1f' "${SAT_TCP[$s]}") % of those answered at saturation (4 connections x 20 outstanding beside the UDP clients)"
done
if has replns && has nsd; then
	echo "replns at saturation: $(ratio "${SAT_QPS[replns]}" "${SAT_QPS[nsd]:-}")x NSD's queries/s on the normal mix; $(printf '%.1f' "${STMT[replns]}") statements/s at the fixed load (steady state)"
fi
if [ -n "${FIXED_CALLS:-}" ]; then
	echo "replns at the fixed load: $FIXED_CALLS store calls for ${DONE[replns]} queries (from its metrics)"
fi
if [ -n "${FLOOD_SENT:-}" ]; then
	echo "replns random-name flood ($RATE/s for $DURATION s): $FLOOD_SENT answered; replns made $FLOOD_CALLS store calls;" \
		"the databases completed $FLOOD_STMT statements ($(echo "$FLOOD_STMT / $DURATION" | bc -l | xargs printf '%.1f')/s) and committed $FLOOD_X transactions ($(echo "$FLOOD_X / $DURATION" | bc -l | xargs printf '%.1f')/s: autovacuum included, and pg_stat_database can be 10 s late, so some are the saturation phase's)"
fi
echo "pg_stat_statements entries evicted (must be 0 for exact counts): $(dealloc)"
for s in $SERVERS; do
	if [ -n "${PROFILE[$s]:-}" ]; then printf '\n%s\n' "${PROFILE[$s]}"; fi
done
