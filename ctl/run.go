// Package ctl is replctl, the operator's tool: the schema of each
// cluster's database, repls, custom domains, moves between clusters and
// tombstones. cmd/replctl calls Main; tests call it in-process.
package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/cli"
	"github.com/replproxy/replproxy/store"
)

// envPrefix starts the environment variables of the global flags:
// REPLCTL_REGISTRY, REPLCTL_ZONE, ... (internal/cli: a variable set to the
// empty string counts as not set).
const envPrefix = "REPLCTL"

const usage = `Usage: replctl -registry FILE [global flags] COMMAND [arguments] [flags]

replctl is the operator's tool for replproxy: the schema of each cluster's
database, repls, custom domains, moves between clusters, and tombstones.
Every cluster is reached through its store in the registry: a postgres://
DSN or an embedded store file.

Commands:
  migrate --cluster NAME | --all
        apply pending schema migrations to PostgreSQL stores
  clusters status
        per cluster: reachable or not, schema version, repls, tombstones, domains
  repl create OWNER/SLUG --cluster NAME --endpoint HOST:PORT [--id ID]
  repl show REPL
        the repl in every cluster, its domains, and whether routing is sound
  repl list [--cluster NAME] [--owner OWNER]
  repl delete REPL [--cluster NAME]
  domain link DOMAIN REPL
  domain unlink DOMAIN
  domain verify DOMAIN [--resolver HOST:PORT]
  domain list [--repl REPL]
  move REPL --to CLUSTER --endpoint HOST:PORT [--endpoint HOST:PORT ...] [--dry-run]
        move a repl to another cluster with no request dropped; rerun the
        same command to finish a move that stopped part way
  tombstones list [--cluster NAME]
  tombstones gc [--older-than 24h] [--cluster NAME] [--dry-run]
  certs list [--cluster NAME]
        the TLS certificates the proxies share: names, issuer, expiry

REPL is a repl id (r1a2b3), OWNER/SLUG (alice/blog), or a name under -zone
(blog.alice.repl.co, r1a2b3.id.repl.co). Flags may follow the arguments.
"replctl COMMAND -h" describes a command.

Global flags (also accepted after the command). Each can also be set in the
environment variable shown beside it; the command line wins, and a variable
set to the empty string counts as not set:
%s
Exit status:
  0  success
  1  failure: a database unreachable, a move stopped part way (rerun it),
     or anything else that went wrong
  2  usage: a bad command line, flag or value
  3  not found: no such repl, domain or cluster
  4  conflict: already exists, already there, or taken by another repl
  5  domain verify: DNS does not prove ownership of the domain (yet)
`

// Exit statuses.
const (
	exitOK         = 0
	exitFailure    = 1
	exitUsage      = 2
	exitNotFound   = 3
	exitConflict   = 4
	exitUnverified = 5
)

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errUnverified: DNS does not prove ownership of a domain (exit status 5).
var errUnverified = errors.New("not verified")

// exitCode maps an error to replctl's exit status.
func exitCode(err error) int {
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue), errors.Is(err, flag.ErrHelp):
		return exitUsage
	case errors.Is(err, errUnverified):
		return exitUnverified
	case isStopped(err), errors.Is(err, store.ErrUnavailable):
		return exitFailure
	case errors.Is(err, store.ErrNotFound):
		return exitNotFound
	case errors.Is(err, store.ErrConflict):
		return exitConflict
	case errors.Is(err, store.ErrInvalid):
		return exitUsage
	}
	return exitFailure
}

// globals are the flags every command takes.
type globals struct {
	registry string
	zone     string
	output   string
	timeout  time.Duration
	logLevel string
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.registry, "registry", "", "the cluster registry file (required)")
	fs.StringVar(&g.zone, "zone", "", "the platform's DNS zone, e.g. repl.co: for names as REPL, and the CNAME domain verify accepts")
	fs.StringVar(&g.output, "o", "table", "output format: table or json")
	fs.DurationVar(&g.timeout, "timeout", time.Minute, "give up on the whole command after this long")
	fs.StringVar(&g.logLevel, "log-level", "info", "log level of the progress log on stderr: debug, info, warn or error")
}

// app is one run of replctl.
type app struct {
	globals
	stdout, stderr io.Writer
	zoneV          store.Zone
	hasZone        bool
	logger         *zap.Logger
	reg            *cluster.Registry
	set            map[string]bool // global flags given on the command line
}

// command is one of replctl's commands.
type command struct {
	name    string // e.g. "repl create"
	args    string // e.g. "OWNER/SLUG"
	summary string
	flags   func(fs *flag.FlagSet) // the command's own flags
	run     func(ctx context.Context, a *app, args []string) error
	nargs   int // positional arguments required
}

// Main runs replctl with args (without the program name), writing output
// to stdout and errors and progress to stderr, and returns the exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, set: map[string]bool{}}
	err := a.run(ctx, args)
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	default:
		fmt.Fprintln(stderr, "replctl:", err)
		var ue *usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(stderr, `Run "replctl -h" for usage.`)
		}
	}
	if a.logger != nil {
		_ = a.logger.Sync()
	}
	return exitCode(err)
}

func (a *app) run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("replctl", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	a.register(fs)
	cli.AddEnvUsage(fs, envPrefix)
	fs.Usage = func() {
		var b strings.Builder
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(a.stderr)
		fmt.Fprintf(a.stderr, usage, b.String())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	fs.Visit(func(f *flag.Flag) { a.set[f.Name] = true })
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return usagef("no command given")
	}
	cmd, rest, err := findCommand(rest)
	if err != nil {
		return err
	}

	cfs := flag.NewFlagSet("replctl "+cmd.name, flag.ContinueOnError)
	cfs.SetOutput(a.stderr)
	if cmd.flags != nil {
		cmd.flags(cfs)
	}
	own := map[string]bool{}
	cfs.VisitAll(func(f *flag.Flag) { own[f.Name] = true })
	given := a.globals
	a.register(cfs) // sets the defaults again: keep what was given before the command
	a.globals = given
	cfs.Usage = func() {
		var b strings.Builder
		fmt.Fprintf(&b, "Usage: replctl %s", cmd.name)
		if cmd.args != "" {
			fmt.Fprintf(&b, " %s", cmd.args)
		}
		fmt.Fprintf(&b, " [flags]\n\n%s\n\n", cmd.summary)
		if len(own) > 0 {
			b.WriteString("Flags:\n")
			cfs.VisitAll(func(f *flag.Flag) {
				if own[f.Name] {
					printFlag(&b, f)
				}
			})
			b.WriteString("\n")
		}
		b.WriteString("Global flags and exit statuses: see replctl -h.\n")
		fmt.Fprint(a.stderr, b.String())
	}
	pos, err := parseInterspersed(cfs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%s: %v", cmd.name, err)
	}
	cfs.Visit(func(f *flag.Flag) {
		if !own[f.Name] {
			a.set[f.Name] = true
		}
	})
	if len(pos) != cmd.nargs {
		if cmd.nargs == 0 {
			return usagef("%s: unexpected argument %q", cmd.name, pos[0])
		}
		return usagef("%s: want %s, got %d argument(s)", cmd.name, cmd.args, len(pos))
	}
	if err := a.setup(fs); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	return cmd.run(ctx, a, pos)
}

// setup applies the environment to the global flags not given, checks
// them, and builds the logger.
func (a *app) setup(fs *flag.FlagSet) error {
	given := func(name string) bool { return a.set[name] }
	if err := cli.ApplyEnv(fs, envPrefix, given, os.LookupEnv); err != nil {
		return usagef("%v", err)
	}
	if a.output != "table" && a.output != "json" {
		return usagef("-o %q: want table or json", a.output)
	}
	if a.timeout <= 0 {
		return usagef("-timeout %s: want a positive duration", a.timeout)
	}
	if a.zone != "" {
		var err error
		if a.zoneV, err = store.NewZone(a.zone); err != nil {
			return usagef("-zone: %v", err)
		}
		a.hasZone = true
	}
	logger, err := cli.NewLoggerTo(a.stderr, a.logLevel, "console")
	if err != nil {
		return usagef("%v", err)
	}
	a.logger = logger
	return nil
}

// registry loads the registry named by -registry.
func (a *app) registry() (*cluster.Registry, error) {
	if a.reg != nil {
		return a.reg, nil
	}
	if a.globals.registry == "" {
		return nil, usagef("no registry: give -registry FILE or set %s", cli.EnvName(envPrefix, "registry"))
	}
	reg, err := cluster.Load(a.globals.registry)
	if err != nil {
		return nil, fmt.Errorf("load registry: %w", err)
	}
	a.reg = reg
	return reg, nil
}

// findCommand picks the command named by the first one or two words.
func findCommand(args []string) (command, []string, error) {
	byName := map[string]command{}
	groups := map[string][]string{}
	for _, c := range commands() {
		byName[c.name] = c
		if g, sub, ok := strings.Cut(c.name, " "); ok {
			groups[g] = append(groups[g], sub)
		}
	}
	if subs, ok := groups[args[0]]; ok {
		sort.Strings(subs)
		if len(args) < 2 {
			return command{}, nil, usagef("%s: want a subcommand: %s", args[0], strings.Join(subs, ", "))
		}
		if c, ok := byName[args[0]+" "+args[1]]; ok {
			return c, args[2:], nil
		}
		return command{}, nil, usagef("%s: unknown subcommand %q: want %s", args[0], args[1], strings.Join(subs, ", "))
	}
	if c, ok := byName[args[0]]; ok {
		return c, args[1:], nil
	}
	return command{}, nil, usagef("unknown command %q", args[0])
}

func commands() []command {
	return []command{
		migrateCommand(),
		clustersStatusCommand(),
		replCreateCommand(), replShowCommand(), replListCommand(), replDeleteCommand(),
		replSleepCommand(), replWakeCommand(),
		domainLinkCommand(), domainUnlinkCommand(), domainVerifyCommand(), domainListCommand(),
		moveCommand(),
		tombstonesListCommand(), tombstonesGCCommand(),
		certsListCommand(),
	}
}

// parseInterspersed parses fs from args, allowing flags after positional
// arguments (until "--"), and returns the positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// printFlag writes one flag as PrintDefaults would.
func printFlag(w io.Writer, f *flag.Flag) {
	name, use := flag.UnquoteUsage(f)
	line := "  --" + f.Name
	if name != "" {
		line += " " + name
	}
	line += "\n    \t" + strings.ReplaceAll(use, "\n", "\n    \t")
	if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
		line += fmt.Sprintf(" (default %s)", f.DefValue)
	}
	fmt.Fprintln(w, line)
}

// listFlag is a flag that may be repeated, or given comma-separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}
