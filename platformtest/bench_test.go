package platformtest_test

import (
	"testing"

	"github.com/replproxy/replproxy/platformtest"
)

// BenchmarkStart measures the start-up of a two-cluster platform, ready
// to route (every proxy and replns ready), and its stop: the budget is
// 300 ms in-process on embedded stores and 5 s on PostgreSQL.
func BenchmarkStart(b *testing.B) {
	for _, bc := range []struct {
		name string
		o    platformtest.Options
	}{
		{"in-process/embedded", platformtest.Options{}},
		{"in-process/postgres", platformtest.Options{Store: platformtest.Postgres}},
		{"binaries/embedded", platformtest.Options{Mode: platformtest.Binaries}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				err := platformtest.Run(nil, func(t platformtest.TB) { platformtest.Start(t, bc.o) })
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
