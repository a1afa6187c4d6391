#!/usr/bin/env bash
# bench/dns/torture.sh: water torture. replns and NSD (and PowerDNS if
# SERVERS names it) serve one zone of $REPLS repls (default 400,000) on
# loopback, all started at once; phase by phase, against each in turn (the
# others idle, so each ratio to NSD compares figures seconds apart):
#
#   none       the legitimate stream alone: bench/dns/probe sending
#              $LEGIT_RATE A queries/s for $PHASE s over 1,000 existing names
#              (cached: they get a warming pass first), from 127.0.0.2;
#   challenge  the same beside a flood of TXT for _acme-challenge.<existing
#              repl name>, 1% of which have a record;
#   random     ... beside a flood of A for <random>.<existing owner>.<zone>
#              and <random>.id.<zone>;
#   spread     ... beside a flood of A for existing repl names drawn
#              uniformly from half the repls (200,000 of 400,000), in random
#              case: the names-reloaded-every-TTL case;
#   none       the legitimate stream alone again, to see drift.
#
# Each flood is dnsperf at $FLOOD_RATE queries/s from 127.0.0.1 (timeout
# 1 s), started a second before the legitimate stream and ending a second
# after it. Figures: the legitimate stream's answered share and latency
# percentiles (lost queries count as infinitely slow: p99 "inf" means more
# than 1% lost), its p99 as a ratio to its unflooded p99 (the first "none")
# and to NSD's in the same phase; the flood's answered queries/s; the
# server's CPU; PostgreSQL statements/s over the stream's $PHASE s
# (pg_stat_statements, see bench/dns/common.sh), and for replns the
# statements it ran most.
#
# Response rate limiting is off in both servers (replns -rrl-rate 0, NSD
# rrl-ratelimit 0): the flood is measured against the data path, not the
# limiter. The server is pinned to CPU $SERVER_CPU; dnsperf, the probe and
# PostgreSQL share CPU $LOAD_CPU.
#
# Needs root and the Debian packages dnsperf nsd postgresql (pdns-server
# pdns-backend-pgsql if SERVERS has pdns). About 4-5 minutes at 400,000
# repls (generation and NSD's zone load included).
set -euo pipefail
cd "$(dirname "$0")/../.."

REPLS=${REPLS:-400000}
PHASE=${PHASE:-10}
FLOOD_RATE=${FLOOD_RATE:-10000}
LEGIT_RATE=${LEGIT_RATE:-1000}
SERVERS=${SERVERS:-"nsd replns"}
PHASES=${PHASES:-"none challenge random spread none"}
QUERIES=${QUERIES:-10000} # run.sh's query files: unused here
GEN_FLAGS="-torture $((FLOOD_RATE * (PHASE + 3)))"
. bench/dns/common.sh

go build -o "$tmp/probe" ./bench/dns/probe

declare -A ANS P50 P99 P999 LOST FQPS FLOST FCODES CPU STMT TOP SPORT SPID
for s in $SERVERS; do
	log "$s: starting and warming the legitimate names"
	start "$s"
	SPORT[$s]=$PORT SPID[$s]=$PID
	perf -d "$tmp/legit.txt" -n 5 -c 1 -q 100
done
# Phase by phase, each server in turn (the others idle), so that each
# ratio to NSD compares figures taken a few seconds apart.
n=0
for f in $PHASES; do
	n=$((n + 1))
	for s in $SERVERS; do
		k="$s/$n" PORT=${SPORT[$s]} PID=${SPID[$s]}
		dbs=$(dbs_of "$s")
		log "phase $n: flood $f: $s"
		fp=""
		if [ "$f" != none ]; then
			PERF_OUT="$tmp/flood-$s-$n.out" perf -d "$tmp/torture-$f.txt" -l $((PHASE + 2)) -Q "$FLOOD_RATE" -c 2 -q 2000 -t 1 &
			fp=$!
			pids+=("$fp")
			sleep 1
		fi
		[ -n "$dbs" ] && $PSQL -d postgres -Atc "SELECT pg_stat_statements_reset()" >/dev/null
		s0=$(stmts $dbs); c0=$(ticks "$PID")
		out=$(taskset -c "$LOAD_CPU" chrt -f 10 "$tmp/probe" -server "127.0.0.1:$PORT" -source 127.0.0.2 -names "$tmp/legit.txt" \
			-rate "$LEGIT_RATE" -duration "${PHASE}s" -timeout 1s)
		s1=$(stmts $dbs); c1=$(ticks "$PID")
		[ -n "$dbs" ] && TOP[$k]=$(top_stmts $dbs)
		[ -n "$fp" ] && { wait "$fp" || true; }
		get() { echo "$out" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
		ANS[$k]=$(echo "$(get answered) * 100 / $(get sent)" | bc -l | xargs printf '%.1f')
		P50[$k]=$(get p50_ms); P99[$k]=$(get p99_ms); P999[$k]=$(get p999_ms)
		CPU[$k]=$(echo "($c1 - $c0) * 100 / $TICK / $PHASE" | bc -l | xargs printf '%.0f')
		STMT[$k]=-
		[ -n "$dbs" ] && STMT[$k]=$(echo "($s1 - $s0) / $PHASE" | bc -l | xargs printf '%.1f')
		FQPS[$k]=- FLOST[$k]=- FCODES[$k]=-
		if [ -n "$fp" ]; then
			o="$tmp/flood-$s-$n.out"
			FQPS[$k]=$(printf '%.0f' "$(field "Queries per second" "$o")")
			sent=$(field "Queries sent" "$o")
			FLOST[$k]=$(echo "$(field "Queries lost" "$o") * 100 / $sent" | bc -l | xargs printf '%.1f')
			FCODES[$k]=$(awk '/Response codes:/ {sub(/.*codes: */, ""); print; exit}' "$o")
		fi
		sleep 1
	done
done
for s in $SERVERS; do PID=${SPID[$s]} && stop; done

# pratio A B: A/B for latencies that may be "inf".
pratio() {
	case "$1/$2" in
	inf/inf) echo "-" ;;
	inf/*) echo "inf" ;;
	*/inf) echo "0" ;;
	*) ratio "$1" "$2" ;;
	esac
}
echo
echo "Water torture: $REPLS repls, $(nproc) CPUs, server on CPU $SERVER_CPU; dnsperf, the probe and PostgreSQL on CPU $LOAD_CPU; RRL off"
echo "flood: dnsperf at $FLOOD_RATE q/s from 127.0.0.1; legitimate stream: $LEGIT_RATE A q/s over 1,000 cached existing names from 127.0.0.2, $PHASE s"
echo "legit_*: the legitimate stream (lost = unanswered within 1 s, counted as infinitely slow); x unfl: its p99 / its p99 in phase 1 (no flood);"
echo "x NSD: its p99 / NSD's in the same phase; cpu%: the server's; stmt/s: PostgreSQL statements/s during the stream"
printf '%-2s %-9s %-7s %9s %7s | %7s %9s %9s %10s %7s %6s | %5s %9s\n' \
	"#" flood server flood_q/s f_lost% legit% legit_p50 legit_p99 legit_p999 "x unfl" "x NSD" cpu% stmt/s
n=0
for f in $PHASES; do
	n=$((n + 1))
	for s in $SERVERS; do
		k="$s/$n"
		printf '%-2s %-9s %-7s %9s %7s | %7s %9s %9s %10s %7s %6s | %5s %9s\n' "$n" "$f" "$s" "${FQPS[$k]}" "${FLOST[$k]}" "${ANS[$k]}" \
			"${P50[$k]}" "${P99[$k]}" "${P999[$k]}" "$(pratio "${P99[$k]}" "${P99[$s/1]}")" "$(pratio "${P99[$k]}" "${P99[nsd/$n]:-}")" \
			"${CPU[$k]}" "${STMT[$k]}"
	done
done
echo
echo "flood response codes (dnsperf):"
n=0
for f in $PHASES; do
	n=$((n + 1))
	[ "$f" = none ] && continue
	for s in $SERVERS; do printf '  %-2s %-9s %-7s %s\n' "$n" "$f" "$s" "${FCODES[$s/$n]}"; done
done
for s in $SERVERS; do
	[ -n "$(dbs_of "$s")" ] || continue
	echo
	echo "$s: the statements run most in each phase (calls, statement):"
	n=0
	for f in $PHASES; do
		n=$((n + 1))
		echo "  phase $n ($f):"
		if [ -n "${TOP[$s/$n]}" ]; then echo "${TOP[$s/$n]}" | sed 's/^/    /'; else echo "    none"; fi
	done
done
echo
echo "pg_stat_statements entries evicted (must be 0 for exact counts): $(dealloc)"
