#!/usr/bin/env bash
# bench/dns/scale.sh: what replns costs as the platform grows, beside NSD
# serving the same names, for each size N in $SIZES (repls, in two
# clusters; the zone of bench/dns/run.sh):
#
#   start      seconds from launch to answering (NSD: its first answer to
#              the apex SOA; replns: /readyz, every cluster's index built)
#   memory     resident memory once ready (PSS summed over the process and
#              its children, MiB) and the peak (VmHWM, of the largest)
#   batch      one transaction creating $BATCH repls in east: seconds from
#              its commit until replns answers the last of them, and the
#              changes/s that makes
#   reconnect  replns's PostgreSQL connections to east are ended while
#              another $BATCH repls are created: seconds until the last is
#              answered, and how many full index rebuilds it took (0: the
#              change feed resumed from its position)
#
# Every size builds its own throw-away PostgreSQL and zone (bench/dns/
# common.sh), removed at the end. Needs root and the packages of
# bench/dns/run.sh. Sizes above a few million need minutes each and, at
# 10,000,000, about 12 GiB of memory for PostgreSQL, NSD and replns in turn.
#
#   SIZES="100000 1000000" bench/dns/scale.sh     (make bench-scale)
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZES=${SIZES:-"100000 1000000"}
BATCH=${BATCH:-20000}

now() { date +%s.%N; }
# pss PID: PSS of the process and its descendants, MiB.
pss() {
	local sum=0 p kb
	for p in $(tree "$1"); do
		kb=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
		sum=$((sum + ${kb:-0}))
	done
	echo $((sum / 1024))
}
# hwm PID: the largest VmHWM among the process and its descendants, MiB.
hwm() {
	local max=0 p kb
	for p in $(tree "$1"); do
		kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
		[ "${kb:-0}" -gt "$max" ] && max=$kb
	done
	echo $((max / 1024))
}
# answered NAME: whether the server at $PORT has an A record for NAME.
answered() { dig +short +time=1 +tries=1 @127.0.0.1 -p "$PORT" "$1" A 2>/dev/null | grep -q .; }
# wait_answered NAME: seconds until answered NAME (fails after 600 s).
wait_answered() {
	local t0 t1
	t0=$(now)
	for _ in $(seq 60000); do
		if answered "$1"; then t1=$(now); echo "$t1 - $t0" | bc -l; return; fi
		sleep 0.01
	done
	echo "scale: $1 not answered after 600 s" >&2
	exit 1
}
# create FROM: creates $BATCH repls in east in one transaction, named
# s<i>.scale<i/10>, i from FROM.
create() {
	$PSQL -d east -c "INSERT INTO repls (id, owner, slug, endpoints)
		SELECT 'scale' || g, 'scale' || (g / 10), 's' || g, ARRAY['10.9.0.1:8080']
		FROM generate_series($1, $1 + $BATCH - 1) g"
}
rebuilds() {
	curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^replns_index_rebuilds_total\{cluster="east"/ {print $NF}'
}

results=()
for N in $SIZES; do
	row=$(
		REPLS=$N QUERIES=${QUERIES:-10000} SERVERS="nsd replns"
		. bench/dns/common.sh >&2

		t0=$(now); start nsd; t1=$(now)
		nsd_start=$(echo "$t1 - $t0" | bc -l)
		sleep 1
		nsd_pss=$(pss "$PID"); nsd_hwm=$(hwm "$PID")
		stop

		t0=$(now); start replns; t1=$(now)
		ns_start=$(echo "$t1 - $t0" | bc -l)
		sleep 1
		ns_pss=$(pss "$PID"); ns_hwm=$(hwm "$PID")

		log "replns: $BATCH repls in one transaction"
		create 1 >/dev/null
		batch=$(wait_answered "s$BATCH.scale$((BATCH / 10)).repl.test")

		log "replns: its connections to east ended while $BATCH more are created"
		r0=$(rebuilds)
		$PSQL -d postgres -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'east' AND pid <> pg_backend_pid()" >/dev/null
		create $((BATCH + 1)) >/dev/null
		last=$((2 * BATCH))
		reconnect=$(wait_answered "s$last.scale$((last / 10)).repl.test")
		r1=$(rebuilds)
		ns_hwm_after=$(hwm "$PID")
		stop
		printf '%s %.1f %s %s %.1f %s %s %.2f %.0f %.2f %s %s\n' "$N" "$nsd_start" "$nsd_pss" "$nsd_hwm" "$ns_start" "$ns_pss" "$ns_hwm" \
			"$batch" "$(echo "$BATCH / $batch" | bc -l)" "$reconnect" "$((${r1:-0} - ${r0:-0}))" "$ns_hwm_after"
	)
	results+=("$row")
done

echo
echo "scale: replns beside NSD, $(nproc) CPUs; batch: $BATCH repls created in one transaction"
printf '%10s | %9s %8s %8s | %10s %8s %8s %7s | %8s %10s | %12s %8s %9s\n' repls "nsd_start" nsd_MiB nsd_peak "replns_st" MiB peak "x NSD" "batch_s" "changes/s" "reconnect_s" rebuilds peak_end
for r in "${results[@]}"; do
	set -- $r
	printf '%10s | %8.1fs %8s %8s | %9.1fs %8s %8s %7.2f | %8.2f %10s | %11.2fs %8s %9s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$(echo "$5 / $2" | bc -l)" "$8" "$9" "${10}" "${11}" "${12}"
done
