package deploy_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/platformtest"
)

// unit reads a systemd unit file into its [Service] settings: each key
// with every value it is given, in order.
func unit(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is no setting", path, line)
			}
			out[section+k] = append(out[section+k], v)
		}
	}
	return out
}

// TestUnitsHardened checks the settings a reviewer looks for in each
// unit, so that an edit cannot drop one unnoticed; systemd-analyze verify
// and security (make rules) check that systemd reads them as meant.
func TestUnitsHardened(t *testing.T) {
	for _, c := range []struct {
		unit, binary, env string
		caps              string // CapabilityBoundingSet and AmbientCapabilities
		writable          string // StateDirectory
	}{
		{"replproxy@.service", "replproxy", "replproxy.env", "CAP_NET_BIND_SERVICE", "replproxy"},
		{"replns@.service", "replns", "replns.env", "CAP_NET_BIND_SERVICE", ""},
		{"replproxy-migrate.service", "replctl", "replproxy.env", "", ""},
	} {
		t.Run(c.unit, func(t *testing.T) {
			u := unit(t, filepath.Join("systemd", c.unit))
			want := map[string]string{
				"User":                    map[bool]string{true: "replns", false: "replproxy"}[c.binary == "replns"],
				"NoNewPrivileges":         "yes",
				"ProtectSystem":           "strict",
				"ProtectHome":             "yes",
				"PrivateTmp":              "yes",
				"PrivateDevices":          "yes",
				"CapabilityBoundingSet":   c.caps,
				"AmbientCapabilities":     c.caps,
				"StateDirectory":          c.writable,
				"ReadWritePaths":          "",
				"RestrictSUIDSGID":        "yes",
				"SystemCallArchitectures": "native",
				"MemoryDenyWriteExecute":  "yes",
				"UMask":                   "0077",
				"EnvironmentFile":         "/etc/replproxy/" + c.env,
			}
			for k, v := range want {
				got := strings.Join(u["[Service]"+k], " ")
				if got != v {
					t.Errorf("%s: %s=%q, want %q", c.unit, k, got, v)
				}
			}
			exec := strings.Join(u["[Service]ExecStart"], " ")
			if !strings.HasPrefix(exec, "/usr/local/bin/"+c.binary) {
				t.Errorf("%s: ExecStart=%q does not run /usr/local/bin/%s", c.unit, exec, c.binary)
			}
			if _, err := os.Stat(filepath.Join("systemd", c.env+".example")); err != nil {
				t.Errorf("%s: no example of its environment file: %v", c.unit, err)
			}
		})
	}
}

// TestEnvironmentExamples: every variable the example environment files
// set is one the binary reads (its -h names each flag's variable), and the
// ones the units name in ExecStart (replproxy-migrate) are set.
func TestEnvironmentExamples(t *testing.T) {
	for _, c := range []struct{ file, binary string }{
		{"systemd/replproxy.env.example", "replproxy"},
		{"systemd/replns.env.example", "replns"},
	} {
		out, _ := exec.Command(platformtest.Binary(t, c.binary), "-h").CombinedOutput()
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for i, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, _, ok := strings.Cut(line, "=")
			if !ok {
				t.Errorf("%s:%d: %q is not NAME=value", c.file, i+1, line)
				continue
			}
			if !strings.Contains(string(out), "(env "+name+")") {
				t.Errorf("%s:%d: %s -h names no variable %s", c.file, i+1, c.binary, name)
			}
			n++
		}
		t.Logf("%s: %d variables, each a flag of %s", c.file, n, c.binary)
	}
	// The daemons' units set a handover socket (for upgrades between their
	// two instances) that the binary reads, and reload on SIGHUP.
	for _, c := range []struct{ file, binary, env string }{
		{"systemd/replproxy@.service", "replproxy", "REPLPROXY_HANDOVER_SOCKET"},
		{"systemd/replns@.service", "replns", "REPLNS_HANDOVER_SOCKET"},
	} {
		u := unit(t, c.file)
		out, _ := exec.Command(platformtest.Binary(t, c.binary), "-h").CombinedOutput()
		if env := strings.Join(u["[Service]Environment"], " "); !strings.HasPrefix(env, c.env+"=/run/") || !strings.Contains(string(out), "(env "+c.env+")") {
			t.Errorf("%s: Environment=%q; want %s=/run/… (a variable %s -h names)", c.file, env, c.env, c.binary)
		}
		if r := strings.Join(u["[Service]ExecReload"], " "); r != "/bin/kill -HUP $MAINPID" {
			t.Errorf("%s: ExecReload=%q, want SIGHUP", c.file, r)
		}
	}
	migrate := strings.Join(unit(t, "systemd/replproxy-migrate.service")["[Service]ExecStart"], " ")
	env, _ := os.ReadFile("systemd/replproxy.env.example")
	for _, v := range []string{"REPLPROXY_REGISTRY", "REPLPROXY_CLUSTER"} {
		if !strings.Contains(migrate, "${"+v+"}") || !strings.Contains(string(env), "\n"+v+"=") {
			t.Errorf("replproxy-migrate.service uses %s: it must be in its ExecStart and set in replproxy.env.example", v)
		}
	}
}
