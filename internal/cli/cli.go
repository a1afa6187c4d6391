// Package cli holds what the commands share: flags that can also be set
// from the environment, and the logger.
//
// Every flag -some-name of a command with the prefix REPLNS is also read
// from the variable REPLNS_SOME_NAME; the command line wins over the
// environment. A variable set to the empty string counts as not set (so
// that FOO= in a compose file or a systemd unit "unsets" it): the flag
// keeps its default. To give a flag an empty value, write it on the
// command line.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EnvName is the environment variable that sets flag name for a command
// with the given prefix: prefix "REPLPROXY", flag "hop-secret-file" →
// REPLPROXY_HOP_SECRET_FILE. A trailing "_" on the prefix is ignored.
func EnvName(prefix, name string) string {
	return strings.TrimSuffix(prefix, "_") + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// EnvRule is one sentence for a command's usage text: how the environment
// sets flags.
const EnvRule = "Every flag can also be set in the environment variable shown beside it; the\n" +
	"command line wins, and a variable set to the empty string counts as not set."

// ParseEnv parses args into fs, after which every flag not given on the
// command line takes its environment variable, read through lookup
// (os.LookupEnv, or a map in tests), when set and not empty. Positional
// arguments are refused. The usage message lists the variables. Errors
// name the flag or the variable.
func ParseEnv(fs *flag.FlagSet, prefix string, args []string, lookup func(string) (string, bool)) error {
	AddEnvUsage(fs, prefix)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: every setting is a flag, written -name value (see -h)", fs.Args())
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	return ApplyEnv(fs, prefix, func(name string) bool { return given[name] }, lookup)
}

// AddEnvUsage appends each flag's variable to its usage: " (env
// PREFIX_NAME)". ParseEnv calls it; a command that parses in stages calls
// it once itself.
func AddEnvUsage(fs *flag.FlagSet, prefix string) {
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage += " (env " + EnvName(prefix, f.Name) + ")"
	})
}

// ApplyEnv sets every flag of fs for which given reports false from its
// environment variable, read through lookup, when set and not empty. It
// stops at the first value a flag refuses, with an error naming the
// variable, the flag and what the flag wants.
func ApplyEnv(fs *flag.FlagSet, prefix string, given func(name string) bool, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given(f.Name) {
			return
		}
		env := EnvName(prefix, f.Name)
		v, ok := lookup(env)
		if !ok || v == "" {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("environment variable %s=%q (flag -%s): %s", env, v, f.Name, want(f, e))
		}
	})
	return err
}

// want says what a flag accepts, for an error about a value it refused.
func want(f *flag.Flag, err error) string {
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return "want true or false"
	}
	switch name, _ := flag.UnquoteUsage(f); name {
	case "duration":
		return "want a duration such as 90s, 5m or 24h"
	case "int", "uint":
		return "want a whole number"
	case "float":
		return "want a number"
	}
	return err.Error()
}

// NewLoggerTo returns a logger writing to w at level ("debug", "info",
// "warn", "error"), in format "json" (the daemons': JSON lines, the time
// under "time" in ISO 8601, no sampling) or "console" (the same fields,
// for people: tab-separated, colourless).
func NewLoggerTo(w io.Writer, level, format string) (*zap.Logger, error) {
	logger, _, err := NewLoggerLevel(w, level, format)
	return logger, err
}

// NewLoggerLevel is NewLoggerTo with the logger's level returned as a
// zap.AtomicLevel: setting it changes what the logger writes at once, and
// it serves GET and PUT of {"level":"debug"} as an http.Handler (the
// daemons' /loglevel).
func NewLoggerLevel(w io.Writer, level, format string) (*zap.Logger, zap.AtomicLevel, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	al := zap.NewAtomicLevelAt(lvl)
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "time"
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	var encoder zapcore.Encoder
	switch format {
	case "json":
		encoder = zapcore.NewJSONEncoder(enc)
	case "console":
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	default:
		return nil, zap.AtomicLevel{}, fmt.Errorf("-log-format %q: want json or console", format)
	}
	core := zapcore.NewCore(encoder, zapcore.Lock(zapcore.AddSync(w)), al)
	return zap.New(core, zap.AddCaller(), zap.AddStacktrace(zapcore.ErrorLevel), zap.ErrorOutput(zapcore.Lock(os.Stderr))), al, nil
}

// Notify returns a channel that receives a value each time the process
// gets one of sigs (SIGHUP for the daemons' reload), until ctx ends;
// signals that arrive while one is pending are merged into it.
func Notify(ctx context.Context, sigs ...os.Signal) <-chan struct{} {
	in := make(chan os.Signal, 1)
	signal.Notify(in, sigs...)
	out := make(chan struct{}, 1)
	go func() {
		defer signal.Stop(in)
		for {
			select {
			case <-ctx.Done():
				return
			case <-in:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}
