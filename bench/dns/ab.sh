#!/usr/bin/env bash
# bench/dns/ab.sh: replns builds against each other and NSD, interleaved:
# for each of $ROUNDS rounds, NSD then every binary in $BINS in turn serve
# the zone of bench/dns/run.sh (UDP only, rate limiting off, no cookies:
# the data path), each measured at $RATE queries/s for $DUR s and then at
# saturation (10 clients x 200 outstanding) for $DUR s. Prints one line per
# server and round: CPU µs per answered query at the fixed load, queries/s
# and CPU µs per query at saturation, queries lost. Compare within a round.
#
#   git stash; go build -o /tmp/replns-old ./cmd/replns; git stash pop
#   go build -o /tmp/replns-new ./cmd/replns
#   BINS="/tmp/replns-old /tmp/replns-new" bench/dns/ab.sh
#
# A "binary" may be a script that execs replns with other flags or
# environment (GOMAXPROCS=2 exec /tmp/replns-new -udp-sockets 1 "$@").
# Needs root and the packages of bench/dns/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${BINS:-}" ] || { echo "ab.sh: set BINS to the replns binaries to compare" >&2; exit 2; }
SERVERS="nsd replns"
REPLS=${REPLS:-100000}
QUERIES=${QUERIES:-400000}
RATE=${RATE:-20000}
DUR=${DUR:-10}
ROUNDS=${ROUNDS:-3}
. bench/dns/common.sh
for r in $(seq "$ROUNDS"); do
	for s in nsd $BINS; do
		name=$s
		if [ "$s" != nsd ]; then cp "$s" "$tmp/replns"; s=replns; fi
		start "$s"
		perf -d "$tmp/warm.txt" -n 1 -c 4 -q 200
		c0=$(ticks "$PID")
		perf -d "$tmp/fixed.txt" -l "$DUR" -Q "$RATE" -c 4 -q 1000
		c1=$(ticks "$PID")
		fixed=$(echo "($c1 - $c0) * 1000000 / $TICK / $(field 'Queries completed')" | bc -l)
		lost=$(field 'Queries lost')
		c0=$(ticks "$PID")
		perf -d "$tmp/saturation.txt" -l "$DUR" -c 10 -q 200
		c1=$(ticks "$PID")
		sat=$(echo "($c1 - $c0) * 1000000 / $TICK / $(field 'Queries completed')" | bc -l)
		printf 'round %d  %-28s fixed %6.1f us/query  saturation %7.0f q/s %6.1f us/query  lost %s+%s\n' \
			"$r" "$name" "$fixed" "$(field 'Queries per second')" "$sat" "$lost" "$(field 'Queries lost')"
		stop
	done
done
