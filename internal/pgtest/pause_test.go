package pgtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestPauseFreezes: a paused server answers nothing on a connection opened
// before, and answers again once resumed.
func TestPauseFreezes(t *testing.T) {
	srv := Start(t)
	dsn := srv.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	query := func(timeout time.Duration) error {
		qctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var n int
		return conn.QueryRow(qctx, "SELECT 1").Scan(&n)
	}
	srv.Pause(t)
	if err := query(300 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("query to a paused server: %v, want a timeout", err)
	}
	srv.Resume(t)
	// The timed-out query closed the connection: a new one answers.
	conn2, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect after resume: %v", err)
	}
	defer conn2.Close(ctx)
	var n int
	if err := conn2.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil || n != 1 {
		t.Fatalf("query after resume: %d, %v", n, err)
	}
}
