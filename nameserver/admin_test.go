package nameserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// TestReadyWithOneClusterServing: a cluster whose store never opens does
// not make replns unready while another cluster is answered; ?all=1 is the
// strict view, and with no cluster serving replns is not ready.
func TestReadyWithOneClusterServing(t *testing.T) {
	for _, tc := range []struct {
		name          string
		down          []string // stores that never open
		ready, strict int
		count         string
	}{
		{"every cluster", nil, 200, 200, "2 of 2 clusters ready"},
		{"one cluster down", []string{"west.yaml"}, 200, 503, "1 of 2 clusters ready"},
		{"every cluster down", []string{"east.yaml", "west.yaml"}, 503, 503, "0 of 2 clusters ready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg, err := cluster.Load(defaultWorld(t))
			if err != nil {
				t.Fatal(err)
			}
			open := func(ctx context.Context, addr string) (store.Store, error) {
				for _, d := range tc.down {
					if filepath.Base(addr) == d {
						return nil, errors.New("connection refused")
					}
				}
				return cluster.Open(ctx, addr, cluster.OpenOptions{})
			}
			c, err := NewClusters(reg, ClustersConfig{Open: open}, nil, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = c.Run(ctx) }()
			defer func() { cancel(); <-done }()
			srv := httptest.NewServer(NewAdminHandler(prometheus.NewRegistry(), nil, c))
			defer srv.Close()
			get := func(path string) (int, string) {
				resp, err := http.Get(srv.URL + path)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(body)
			}
			want := 2 - len(tc.down)
			waitFor(t, 10*time.Second, "the clusters that open to be synced", func() bool {
				n := 0
				for _, s := range c.Status() {
					if s.Synced {
						n++
					}
				}
				return n == want
			})
			code, body := get("/readyz")
			if code != tc.ready || !strings.Contains(body, tc.count) {
				t.Errorf("/readyz: %d %q, want %d and %q", code, body, tc.ready, tc.count)
			}
			if code, body := get("/readyz?all=1"); code != tc.strict {
				t.Errorf("/readyz?all=1: %d %q, want %d", code, body, tc.strict)
			}
		})
	}
}
