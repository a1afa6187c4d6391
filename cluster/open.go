package cluster

import (
	"context"
	"fmt"

	"github.com/replproxy/replproxy/internal/dsn"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/embedded"
	"github.com/replproxy/replproxy/store/postgres"
	"go.uber.org/zap"
)

// OpenOptions are the choices of Open. The zero value is usable.
type OpenOptions struct {
	// Logger receives the backend's logs; nil discards them.
	Logger *zap.Logger
	// Migrate applies pending schema migrations to a PostgreSQL store.
	// Without it, a database whose schema is not current is an error that
	// says to run `replctl migrate`.
	Migrate bool
	// AppName names a PostgreSQL store's connections (application_name)
	// when its DSN does not. Empty: unnamed.
	AppName string
}

// Open opens the store at addr: a postgres:// or postgresql:// DSN opens
// the PostgreSQL backend; anything else is the path of an embedded store
// file.
func Open(ctx context.Context, addr string, opts OpenOptions) (store.Store, error) {
	if addr == "" {
		return nil, fmt.Errorf("open store: no address: give a postgres:// DSN or the path of a store file")
	}
	if !dsn.IsPostgres(addr) {
		e, err := embedded.Open(ctx, addr, opts.Logger)
		if err != nil {
			return nil, err // a nil Store, not a Store holding a nil *embedded.Store
		}
		return e, nil
	}
	p, err := postgres.Open(ctx, addr, opts.Logger, postgres.WithApplicationName(opts.AppName))
	if err != nil {
		return nil, err
	}
	if opts.Migrate {
		err = p.Migrate(ctx)
	} else {
		err = p.CheckSchema(ctx)
	}
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}
