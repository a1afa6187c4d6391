package postgres_test

import (
	"testing"

	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/storetest"
)

// TestContract gives each case a fresh database on one server.
func TestContract(t *testing.T) {
	srv := pgtest.Start(t)
	storetest.Run(t, func(tt *testing.T) store.Store {
		return openMigrated(tt, srv.NewDatabase(tt))
	})
}

// TestCerts gives each case two stores on one fresh database, as two
// proxies of a cluster have.
func TestCerts(t *testing.T) {
	srv := pgtest.Start(t)
	storetest.RunCerts(t, func(tt *testing.T) (store.Certs, store.Certs) {
		dsn := srv.NewDatabase(tt)
		return openMigrated(tt, dsn).(store.Certs), openPostgres(tt, dsn)
	})
}
