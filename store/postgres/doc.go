// Package postgres is the production store.Store backend: one PostgreSQL
// database per cluster, shared by that cluster's proxies and its container
// manager. It owns the schema (versioned migrations applied with tern:
// Migrate, CheckSchema), the queries, the LISTEN/NOTIFY change feed
// (Watch) and the certificate tables (store.Certs). Open connects from a
// DSN; New takes a *pgxpool.Pool, so pool sizing stays in the DSN.
package postgres
