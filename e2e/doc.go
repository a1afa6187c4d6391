// Package e2e drives the real binaries over real sockets, with real
// databases and real clients (dig, kdig, ...): the platform's, started by
// platformtest in Mode Binaries (start), and the binaries alone where a
// test is about their flags or the demo. Each binary is built once per
// test process (platformtest.Binary); every process a test starts is
// stopped when the test ends.
package e2e
