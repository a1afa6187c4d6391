package e2e

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/replproxy/replproxy/platformtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { platformtest.RemoveBinaries() }))
}
