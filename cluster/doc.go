// Package cluster knows the platform's clusters: the registry file that
// every binary shares (Load, Parse: each cluster's name, proxy
// load-balancer addresses, forwarding address and store address, checked
// with every problem reported by line), and Open, which turns a store
// address into a store: a postgres:// DSN opens store/postgres, anything
// else is the path of a store/embedded file.
package cluster
