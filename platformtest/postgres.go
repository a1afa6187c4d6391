package platformtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"
)

// createDatabase makes a fresh database for cluster on the server at
// serverURL, dropped at cleanup, and returns its DSN.
func createDatabase(t TB, serverURL, cluster string) string {
	t.Helper()
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("platformtest: PostgresURL %q: want postgres://user@host:port/db", serverURL)
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	name := "platformtest_" + cluster + "_" + hex.EncodeToString(suffix[:])
	exec := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, serverURL)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	ident := pgx.Identifier{name}.Sanitize()
	if err := exec("CREATE DATABASE " + ident + " TEMPLATE template0"); err != nil {
		t.Fatalf("platformtest: create database %s on %s: %v", name, u.Redacted(), err)
	}
	t.Cleanup(func() {
		if err := exec("DROP DATABASE IF EXISTS " + ident + " WITH (FORCE)"); err != nil {
			t.Logf("platformtest: drop database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}

// feedQuery ends the LISTEN connections of the database (the change feed
// of every proxy and of replns).
const feedQuery = `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
	WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN %'`

func cutFeed(ctx context.Context, dsn string) (int, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, feedQuery).Scan(&n)
	return n, err
}
