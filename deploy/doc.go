// Package deploy holds what running replproxy, replns and replctl takes
// beyond the binaries, as files to install, not Go code: Prometheus rules
// and their promtool tests (prometheus/), a Grafana dashboard (grafana/),
// and systemd units with example environment files (systemd/). See the
// README's "Operations" section.
//
// Its tests check those files against the binaries: every metric and
// label an expression names is one the binaries export, every alert has a
// promtool test that fires it and one that shows it silent, every variable
// of the environment files is a flag, and the units keep their hardening.
// make rules runs promtool and systemd-analyze on them; e2e's
// TestAlertsFireWhenDatabaseStops runs a real Prometheus on them.
package deploy
