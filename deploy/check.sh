#!/usr/bin/env bash
# make rules: promtool checks and runs the tests of the Prometheus rules;
# systemd-analyze verifies the units (on copies whose ExecStart names the
# binaries in BIN, which must exist) and rates their exposure, and
# systemd-sysusers reads the users file (into a scratch root). A missing
# tool is a skip, said so, unless REPLPROXY_REQUIRE_TOOLS is set (CI): then
# it is a failure.
set -euo pipefail
bin=$(realpath "${1:?usage: deploy/check.sh BIN}")
cd "$(dirname "$0")"

need() {
	command -v "$1" >/dev/null && return 0
	local msg="$1 not found; install it with: apt-get install -y $2"
	if [[ -n ${REPLPROXY_REQUIRE_TOOLS:-} && ${REPLPROXY_REQUIRE_TOOLS} != 0 ]]; then
		echo "$msg (REPLPROXY_REQUIRE_TOOLS is set, so this is a failure, not a skip)" >&2
		exit 1
	fi
	echo "SKIP: $msg"
	return 1
}

if need promtool prometheus; then
	promtool check rules prometheus/*.rules.yml
	(cd prometheus && promtool test rules *.rules_test.yml)
	promtool check config prometheus/prometheus.yml
fi

if need systemd-analyze systemd; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	for u in systemd/*.service; do
		name=${u##*/}
		name=${name/@.service/@a.service} # a template is verified as an instance
		sed "s#/usr/local/bin/#$bin/#g" "$u" >"$tmp/$name"
	done
	# verify exits 0 on warnings (an unknown key, a misspelt value): any
	# output is a failure.
	out=$(systemd-analyze verify --man=no "$tmp"/*.service 2>&1) || { echo "$out" >&2; exit 1; }
	if [[ -n $out ]]; then
		echo "systemd-analyze verify:" >&2
		echo "$out" >&2
		exit 1
	fi
	echo "systemd-analyze verify: $(cd systemd && echo *.service): OK"
	# Exposure above 2.0 (of 10; "OK" is below 4) fails.
	for u in "$tmp"/*.service; do
		systemd-analyze security --offline=yes --threshold=20 "$u" | tail -n 1
	done
	mkdir -p "$tmp/root/etc"
	out=$(systemd-sysusers --root="$tmp/root" --dry-run - <systemd/replproxy.sysusers.conf 2>&1) || { echo "$out" >&2; exit 1; }
	echo "systemd-sysusers: replproxy.sysusers.conf: OK"
fi
