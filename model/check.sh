#!/bin/sh
# Checks model/move.pml with spin: the configurations must hold, and each
# variant that puts a known bug back must be caught violating what that bug
# breaks (a 404, a 508, the repl settled); a pan that fails in any other way
# (another assertion, no report at all) fails the check.
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
# violation prints the kind of failure pan reported in out: holds (no error,
# the search complete), 404, 508, split (settled() failed: live in two
# clusters, or a tombstone not naming the live one), or "other: ..." for
# anything else (another assertion, an invalid end state, no error found in
# a search cut short, a pan that died before its report).
violation() {
	errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' out)
	report=$(sed -n 's/^pan:1: \(.*\) (at depth [0-9]*)$/\1/p' out)
	if [ -z "$errors" ]; then
		echo "other: no \"errors:\" line (pan died?): $(tail -n 1 out)"
	elif [ "$errors" = 0 ] && grep -q 'max search depth too small\|out of memory' out; then
		echo "other: the search was cut short: $(grep -m 1 'max search depth too small\|out of memory' out)"
	elif [ "$errors" = 0 ]; then
		echo holds
	elif [ "$errors" != 1 ]; then
		echo "other: $errors errors"
	else
		case $report in
		'assertion violated no_404') echo 404 ;;
		'assertion violated no_508') echo 508 ;;
		'assertion violated (lives==1)' | 'assertion violated (((c==home)||(tgen[c]==0))||(tto[c]==home))') echo split ;;
		*) echo "other: ${report:-errors: 1, no report}" ;;
		esac
	fi
}
check() { # want (holds, or what must be violated: 404, 508, split), name, spin flags...
	want=$1 name=$2
	shift 2
	spin -a "$@" move.pml >/dev/null
	cc -O2 -w -DSAFETY -DCOLLAPSE -o pan pan.c
	start=$(date +%s)
	./pan -m1000000 >out 2>&1 || true
	states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' out)
	got=$(violation)
	shown=$got
	[ "$got" = holds ] || [ "${got#other}" != "$got" ] || shown="fails: $got"
	printf '%-44s %-12s %12s states %4ss' "$name" "$shown" "$states" "$(($(date +%s) - start))"
	if [ "$got" != "$want" ]; then
		echo "  UNEXPECTED (want: $want)"
		sed -n '/^pan:/p;/errors:/p' out
		status=1
	else
		echo
	fi
}
check holds "two operators at once"
check holds "a move, on, and back, with requests" -DSEQUENCE
check split "without claims: two moves split the repl" -DNOCLAIM
check 508 "retire before repoint: two hops" -DSEQUENCE -DRETIRE_FIRST
check 508 "508 served only when live at the source" -DSEQUENCE -DLOCAL_ONLY
check holds "the name index, replns waiting for it" -DSEQUENCE -DONE -DINDEX
check 404 "the name index, replns trusting tombstones" -DSEQUENCE -DONE -DINDEX -DTARGET_FIRST
check 404 "the name index behind replns, no hold" -DSEQUENCE -DONE -DINDEX -DDNS_AHEAD
check holds "the name index behind replns, the move hold" -DSEQUENCE -DONE -DINDEX -DDNS_AHEAD -DHOLD
exit $status
