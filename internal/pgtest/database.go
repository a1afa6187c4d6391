package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// opTimeout bounds creating or dropping a database.
const opTimeout = 30 * time.Second

// NewDatabase creates a fresh, empty database on the server and returns its
// DSN, the server's DSN naming that database. The database is dropped, its
// connections closed, when the test ends.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := databaseName(t.Name())
	dsn, err := withDatabase(s.dsn, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	// template0 is empty even on a server whose template1 someone has filled.
	if err := s.exec("CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE template0"); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if !s.running() {
			return // stopped by the test: it goes with the server's folder
		}
		if err := s.exec("DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return dsn
}

// exec runs one statement on the server's default database.
func (s *Server) exec(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, sql)
	if cerr := conn.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

// databaseName returns a name unique across test processes sharing a server,
// showing which test made it.
func databaseName(test string) string {
	const maxTest = 24
	var b strings.Builder
	for _, r := range strings.ToLower(test) {
		if b.Len() == maxTest {
			break
		}
		if 'a' <= r && r <= 'z' || '0' <= r && r <= '9' {
			b.WriteRune(r)
		} else if s := b.String(); s != "" && !strings.HasSuffix(s, "_") {
			b.WriteByte('_')
		}
	}
	random := make([]byte, 8)
	_, _ = rand.Read(random) // never fails
	name := "pgtest_"
	if label := strings.TrimSuffix(b.String(), "_"); label != "" {
		name += label + "_"
	}
	return name + hex.EncodeToString(random)
}

// withDatabase returns dsn, a URL or keyword/value DSN, naming database name.
func withDatabase(dsn, name string) (string, error) {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return dsn + " dbname=" + name, nil // a later keyword wins
	}
	u, err := url.Parse(dsn)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the URL and its password
		}
		return "", fmt.Errorf("parse %s: %w", EnvURL, err) // only EnvURL's can be malformed
	}
	u.Path, u.RawPath = "/"+name, ""
	return u.String(), nil
}
