// Command replproxy is the per-cluster reverse proxy: it routes each
// HTTP(S) request by Host to the repl's container, looked up in the
// cluster's store, and forwards requests for repls that moved away to the
// proxy of their new cluster, in exactly one hop.
//
// Run `replproxy -h` for the flags; each can also be set from the
// environment variable shown beside it. The daemon itself is package
// internal/replproxyd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/replproxy/replproxy/internal/cli"
	"github.com/replproxy/replproxy/internal/replproxyd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	reload := cli.Notify(ctx, syscall.SIGHUP) // reloads the configuration
	err := replproxyd.MainWith(ctx, os.Args[1:], os.LookupEnv, os.Stderr, replproxyd.Hooks{Reload: reload})
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "replproxy:", err)
		os.Exit(1)
	}
}
