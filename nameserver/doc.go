// Package nameserver is replns's DNS side: an authoritative server for the
// platform's zone that answers each repl's name with the load-balancer
// addresses of the cluster hosting it.
//
// A Handler implements the zone's semantics (DESIGN.md, "The nameserver")
// over a Source; Clusters is the Source that reads every cluster of the
// registry through routecache.Cache, beside an in-memory index of live repls
// that answers names no cluster has without touching a database. A Server
// answers over UDP (several SO_REUSEPORT sockets, read by a fixed number
// of goroutines, with response rate limiting) and TCP. NewAdminHandler
// serves metrics, health, readiness and pprof.
//
//	clusters, _ := nameserver.NewClusters(registry, nameserver.ClustersConfig{}, nil, logger)
//	go clusters.Run(ctx)
//	h, _ := nameserver.NewHandler(nameserver.Config{
//		Zone:        "repl.co",
//		NameServers: []nameserver.NameServer{{Name: "ns1.repl.co", Addrs: addrs}},
//	}, clusters, nameserver.NewMetrics(prometheus.DefaultRegisterer), nil, logger)
//	srv, _ := nameserver.NewServer(nameserver.ServerConfig{Addr: "192.0.2.53:53"}, h, logger)
//	err := srv.Serve(ctx)
package nameserver
