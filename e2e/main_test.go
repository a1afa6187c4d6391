// Package e2e drives the real binaries over real sockets, with real
// databases and real clients (dig, kdig, ...). Each binary is built once per
// test process (buildBinary); every process a test starts is stopped when
// the test ends.
package e2e

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { removeBinaries() }))
}
