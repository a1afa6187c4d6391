#!/bin/sh
# Checks model/move.pml with spin: the two configurations must hold, and
# each variant that puts a known bug back must be caught.
set -eu
for tool in spin cc; do
	if ! command -v "$tool" >/dev/null; then
		if [ "${REPLPROXY_REQUIRE_TOOLS:-}" = 1 ]; then
			echo "model: $tool is missing: apt-get install -y spin gcc" >&2
			exit 1
		fi
		echo "model: skipped: $tool is missing (apt-get install -y spin gcc)"
		exit 0
	fi
done
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$here/move.pml" "$tmp/"
cd "$tmp"
status=0
check() { # want (holds|fails), name, spin flags...
	want=$1 name=$2
	shift 2
	spin -a "$@" move.pml >/dev/null
	cc -O2 -w -DSAFETY -DCOLLAPSE -o pan pan.c
	start=$(date +%s)
	./pan -m1000000 >out 2>&1 || true
	errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' out)
	states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' out)
	got=holds
	[ "$errors" = 0 ] || got=fails
	printf '%-44s %-6s %12s states %4ss' "$name" "$got" "$states" "$(($(date +%s) - start))"
	if [ "$got" != "$want" ]; then
		echo "  UNEXPECTED (want: $want)"
		sed -n '/assertion violated/p;/errors:/p' out
		status=1
	else
		echo
	fi
}
check holds "two operators at once"
check holds "a move, on, and back, with requests" -DSEQUENCE
check fails "without claims: two moves split the repl" -DNOCLAIM
check fails "retire before repoint: two hops" -DSEQUENCE -DRETIRE_FIRST
check fails "508 served only when live at the source" -DSEQUENCE -DLOCAL_ONLY
check holds "the name index, replns waiting for it" -DSEQUENCE -DONE -DINDEX
check fails "the name index, replns trusting tombstones" -DSEQUENCE -DONE -DINDEX -DTARGET_FIRST
check fails "finding: the name index behind replns" -DSEQUENCE -DONE -DINDEX -DDNS_AHEAD
exit $status
