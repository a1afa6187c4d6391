package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// bin is the replctl binary, built once for the test process.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "replctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "replctl")
	// go test puts the go command that runs it first in PATH.
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build replctl: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// replctl runs the binary and returns its exit status and output.
func replctl(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// registry writes a registry of two clusters with empty embedded stores.
func registry(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"east", "west"} {
		if err := os.WriteFile(filepath.Join(dir, n+".yaml"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	reg := filepath.Join(dir, "clusters.yaml")
	err := os.WriteFile(reg, []byte(`clusters:
  - {name: east, proxy_ipv4: [192.0.2.1], forward: "10.0.0.1:8443", store: east.yaml}
  - {name: west, proxy_ipv4: [192.0.2.2], forward: "10.0.0.2:8443", store: west.yaml}
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func TestExitStatus(t *testing.T) {
	env := []string{"REPLCTL_REGISTRY=" + registry(t), "REPLCTL_ZONE=repl.test"}
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"-h"}, 0, "Exit status:"},
		{[]string{"clusters", "status"}, 0, ""},
		{[]string{"repl", "create", "alice/blog", "--cluster", "east", "--endpoint", "127.0.0.1:9001", "--id", "r1"}, 0, ""},
		{nil, 2, "no command given"},
		{[]string{"move", "r1"}, 2, "give --to CLUSTER"},
		{[]string{"repl", "show", "r2"}, 3, "no cluster has a repl r2"},
		{[]string{"move", "r1", "--to", "east", "--endpoint", "127.0.0.1:9001"}, 4, "already live in the destination"},
		{[]string{"move", "r1", "--to", "west", "--endpoint", "127.0.0.1:9002"}, 0, "move done"},
		{[]string{"move", "r1", "--to", "west", "--endpoint", "127.0.0.1:9002"}, 0, "move already done"},
	} {
		code, _, stderr := replctl(t, env, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.says) {
			t.Errorf("replctl %s: exit %d, want %d saying %q; stderr:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.says, stderr)
		}
	}

	code, stdout, stderr := replctl(t, env, "repl", "show", "blog.alice.repl.test", "-o", "json")
	var show struct {
		Serving string `json:"serving"`
		Settled bool   `json:"settled"`
	}
	if err := json.Unmarshal([]byte(stdout), &show); err != nil || code != 0 || show.Serving != "west" || !show.Settled {
		t.Errorf("repl show: exit %d, %+v, %v\n%s%s", code, show, err, stdout, stderr)
	}
}
