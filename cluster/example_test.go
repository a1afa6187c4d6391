package cluster_test

import (
	"fmt"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/dsn"
)

func ExampleParse() {
	data := []byte(`
clusters:
  - name: east
    proxy_ipv4: [192.0.2.10, 192.0.2.11]
    proxy_ipv6: ["2001:db8::10"]
    forward: 10.0.0.10:8443
    store: postgres://replproxy:hunter2@db-east/replproxy
  - name: west
    proxy_ipv4: [198.51.100.10]
    forward: 10.1.0.10:8443
    store: west.db
`)
	r, err := cluster.Parse("/etc/replproxy/clusters.yaml", data)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, c := range r.Clusters {
		addr := dsn.Redact(c.Store)
		if !dsn.IsPostgres(c.Store) {
			addr = "embedded " + addr
		}
		fmt.Println(c.Name, c.ProxyIPv4, c.ProxyIPv6, c.Forward, addr)
	}
	// Output:
	// east [192.0.2.10 192.0.2.11] [2001:db8::10] 10.0.0.10:8443 postgres://replproxy:xxxxx@db-east/replproxy
	// west [198.51.100.10] [] 10.1.0.10:8443 embedded /etc/replproxy/west.db
}
