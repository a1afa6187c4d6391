// Command replctl is the operator's tool for replproxy: it applies the
// schema to each cluster's database, manages repls and their custom
// domains, moves repls between clusters without dropping a request, and
// collects old tombstones.
//
// Run `replctl -h` for the commands, the flags and the exit statuses.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/replproxy/replproxy/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
