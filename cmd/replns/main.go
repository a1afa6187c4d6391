// Command replns is the authoritative DNS server of a replproxy platform's
// zone: it answers each repl's name with the load-balancer addresses of the
// cluster that hosts it, read from every cluster's store, and serves the
// zone's apex and DNS-01 challenge records. Run replns -h for its flags;
// each can also be set in the environment (REPLNS_<FLAG>). The daemon
// itself is package internal/replnsd.
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
	"github.com/replproxy/replproxy/internal/replnsd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	reload := cli.Notify(ctx, syscall.SIGHUP) // reloads the configuration
	err := replnsd.MainWith(ctx, os.Args[1:], os.LookupEnv, os.Stderr, replnsd.Hooks{Reload: reload})
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "replns:", err)
		os.Exit(1)
	}
}
