// Package embedded is the store.Store backend held in one YAML file, for a
// single machine, the demo and fast tests: no server, reads from an
// immutable in-memory snapshot, the file watched and reloaded when it
// changes, writes from any process serialised by a flock and replaced
// atomically. Certificates (store.Certs) live in files beside it. Store's
// documentation gives the file format.
package embedded
