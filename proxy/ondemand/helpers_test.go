package ondemand_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/replproxy/replproxy/store"
)

// The helpers below are the proxy package's test helpers that the
// on-demand tests, which run whole proxies, need too.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	testZone, _ = store.NewZone("repl.test")
	testSecret  = []byte("0123456789abcdef0123456789abcdef-test")
)
