package benchproc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Perf samples processes with Linux perf (perf record) while a
// measurement runs, to say where their CPU time went.
type Perf struct {
	cmd  *exec.Cmd
	data string
}

// StartPerf starts sampling pids (at 999 Hz, user and kernel stacks) into
// the file data. Stop ends it.
func StartPerf(data string, pids ...int) (*Perf, error) {
	if _, err := exec.LookPath("perf"); err != nil {
		return nil, fmt.Errorf("perf is missing: apt-get install -y linux-perf")
	}
	ids := make([]string, len(pids))
	for i, pid := range pids {
		ids[i] = strconv.Itoa(pid)
	}
	cmd := exec.Command("perf", "record", "-q", "-F", "999", "-g", "-o", data, "-p", strings.Join(ids, ","))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start perf record: %w", err)
	}
	time.Sleep(200 * time.Millisecond) // perf attaches
	return &Perf{cmd: cmd, data: data}, nil
}

// Stop ends the sampling (SIGINT, as perf record wants, so that it writes
// its file whole) and groups what it sampled (Group).
func (p *Perf) Stop() ([]Share, error) {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	if err := p.cmd.Wait(); err != nil {
		if exit := (*exec.ExitError)(nil); !errors.As(err, &exit) {
			return nil, fmt.Errorf("perf record: %w", err)
		}
		// perf record's status after SIGINT is not an error of ours.
	}
	return Group(p.data)
}

// Share is one group's part of the samples.
type Share struct {
	Group   string
	Percent float64
}

// Group reads a perf.data file (perf report, self time by symbol) and
// sums the samples into the groups of groupOf, largest first.
func Group(data string) ([]Share, error) {
	out, err := exec.Command("perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
		"-g", "none", "--percent-limit", "0").Output()
	if err != nil {
		return nil, fmt.Errorf("perf report %s: %w", data, err)
	}
	return groupReport(bytes.NewReader(out))
}

// groupReport parses perf report's lines: "  12.34%  dso  [k] symbol".
func groupReport(r io.Reader) ([]Share, error) {
	sums := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasSuffix(f[0], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err != nil {
			continue
		}
		dso, kind, sym := f[1], f[2], strings.Join(f[3:], " ")
		sums[groupOf(dso, kind, sym)] += pct
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	shares := make([]Share, 0, len(sums))
	for g, p := range sums {
		shares = append(shares, Share{g, p})
	}
	slices.SortFunc(shares, func(a, b Share) int {
		switch {
		case a.Percent > b.Percent:
			return -1
		case a.Percent < b.Percent:
			return 1
		}
		return strings.Compare(a.Group, b.Group)
	})
	return shares, nil
}

// groupOf names the part of the system a sampled symbol belongs to.
func groupOf(dso, kind, sym string) string {
	if kind == "[k]" || strings.Contains(dso, "kernel") {
		switch {
		case containsAny(sym, "_raw_spin_unlock_irqrestore", "finish_task_switch", "pv_queued_spin_unlock", "irqentry_exit"):
			// Without a PMU (a VM) perf samples on a timer, and time spent
			// with interrupts off — waking a thread, softirq work on
			// loopback — is charged where they come back on.
			return "kernel: wake-ups, context switches, softirqs (interrupts-off time)"
		case containsAny(sym, "tcp", "ip_", "ip6", "skb", "__dev_", "net_rx", "loopback", "sock_", "__sys_sendto", "__sys_recvfrom",
			"udp", "inet_", "netif", "napi", "__napi", "process_backlog", "nf_", "__netif", "dst_", "neigh"):
			return "kernel: sockets, TCP/UDP/IP, loopback"
		case containsAny(sym, "epoll", "ep_"):
			return "kernel: epoll"
		case containsAny(sym, "futex", "schedule", "try_to_wake_up", "enqueue", "dequeue", "finish_task_switch", "pick_next",
			"update_curr", "select_task", "ttwu", "switch_to", "sched", "idle", "__switch"):
			return "kernel: scheduler, futex, wake-ups"
		case containsAny(sym, "entry_SYSCALL", "syscall", "__x64_sys", "do_syscall", "exit_to_user", "syscall_exit", "fdget", "__fget"):
			return "kernel: system call entry and exit"
		case containsAny(sym, "copy_user", "copyin", "copyout", "_copy_", "memcpy", "memset", "clear_page"):
			return "kernel: copies"
		}
		return "kernel: other"
	}
	s := sym
	switch {
	case strings.HasPrefix(s, "internal/runtime/syscall"):
		return "Go: net, internal/poll, syscall wrappers"
	case strings.HasPrefix(s, "runtime.") || strings.HasPrefix(s, "runtime/") || strings.HasPrefix(s, "gcWriteBarrier") ||
		strings.HasPrefix(s, "aeshash") || strings.HasPrefix(s, "memeqbody") || strings.HasPrefix(s, "indexbytebody") ||
		strings.HasPrefix(s, "cmpbody") || strings.HasPrefix(s, "internal/runtime") || strings.HasPrefix(s, "internal/bytealg") ||
		strings.HasPrefix(s, "internal/abi") || strings.HasPrefix(s, "internal/sync"):
		switch {
		case containsAny(s, "mallocgc", "gcBgMark", "gcDrain", "scanobject", "markroot", "greyobject", "findObject", "sweep",
			"mheap", "mcache", "mspan", "mcentral", "nextFreeFast", "heapBits", "wbBuf", "bulkBarrier", "gcWriteBarrier",
			"scanblock", "scanstack", "gcAssist", "gcStart", "gcMark", "newobject", "makeslice", "growslice", "memclrNoHeap",
			"tryDeferToSpanScan", "typePointers", "scanSpan", "spanClass", "allocSpan", "arenaIndex", "spanOf", "pageAlloc"):
			return "Go runtime: allocation and GC"
		case containsAny(s, "runtime.step", "pcvalue", "funcInfo", "findfunc", "adjustframe", "gentraceback", "unwinder",
			"copystack", "newstack", "morestack", "stackalloc", "stackfree", "stackcache"):
			return "Go runtime: stack growth and unwinding"
		case containsAny(s, "selectgo", "chansend", "chanrecv", "closechan", "makechan", "selectnbsend", "selectnbrecv", "send", "recv"):
			return "Go runtime: channels and select"
		case containsAny(s, "schedule", "findRunnable", "park", "netpoll", "futex", "notesleep", "notewakeup", "mcall",
			"gopark", "goready", "ready", "runq", "stealWork", "casgstatus", "execute", "wakep", "startm", "stopm", "handoff",
			"gosched", "goexit", "newproc", "systemstack", "resetspinning", "checkTimers", "nanotime", "usleep", "osyield",
			"lock2", "unlock2", "semacquire", "semrelease", "entersyscall", "exitsyscall", "reentersyscall", "timer", "Timer",
			"procyield", "morestack", "newstack", "copystack", "save", "gogo", "rt0_go", "mstart", "sigtramp", "sighandler"):
			return "Go runtime: scheduler, timers, netpoll, syscall hand-off"
		case containsAny(s, "aeshash", "memhash", "strhash", "mapaccess", "mapassign", "mapdelete", "internal/runtime/maps",
			"mapiter", "memeqbody", "cmpbody", "indexbytebody", "bytealg"):
			return "Go runtime: maps, hashing, comparisons"
		}
		return "Go runtime: other (memmove, interfaces, …)"
	case strings.HasPrefix(s, "syscall.") || strings.HasPrefix(s, "internal/poll.") || strings.HasPrefix(s, "os.") ||
		strings.HasPrefix(s, "net.") || strings.HasPrefix(s, "internal/syscall"):
		return "Go: net, internal/poll, syscall wrappers"
	case strings.HasPrefix(s, "net/http/httputil."):
		return "net/http/httputil (ReverseProxy)"
	case strings.Contains(s, "http2") || strings.HasPrefix(s, "golang.org/x/net/http2"):
		return "HTTP/2 (net/http's, x/net/http2)"
	case strings.HasPrefix(s, "net/http.") || strings.HasPrefix(s, "net/textproto.") || strings.HasPrefix(s, "net/url.") ||
		strings.HasPrefix(s, "mime"):
		return "net/http server and client (parsing, headers, writes)"
	case strings.HasPrefix(s, "crypto/") || strings.HasPrefix(s, "vendor/golang.org/x/crypto") || strings.HasPrefix(s, "golang.org/x/crypto"):
		return "crypto (TLS, HMAC)"
	case strings.HasPrefix(s, "github.com/miekg/dns."):
		return "miekg/dns (DNS messages, server loop)"
	case strings.HasPrefix(s, "github.com/replproxy/"):
		return "the project's own code (replproxy, replns)"
	case strings.HasPrefix(s, "go.uber.org/zap") || strings.HasPrefix(s, "go.uber.org/"):
		return "zap (logging)"
	case strings.HasPrefix(s, "github.com/prometheus/"):
		return "Prometheus client (metrics)"
	case strings.HasPrefix(s, "bufio.") || strings.HasPrefix(s, "bytes.") || strings.HasPrefix(s, "strings.") ||
		strings.HasPrefix(s, "strconv.") || strings.HasPrefix(s, "sync.") || strings.HasPrefix(s, "time.") ||
		strings.HasPrefix(s, "sort.") || strings.HasPrefix(s, "unicode") || strings.HasPrefix(s, "fmt.") ||
		strings.HasPrefix(s, "reflect.") || strings.HasPrefix(s, "context.") || strings.HasPrefix(s, "io.") ||
		strings.HasPrefix(s, "slices.") || strings.HasPrefix(s, "errors.") || strings.HasPrefix(s, "math") ||
		strings.HasPrefix(s, "encoding/") || strings.HasPrefix(s, "hash/") || strings.HasPrefix(s, "container/") ||
		strings.HasPrefix(s, "sync/atomic") || strings.HasPrefix(s, "internal/"):
		return "Go std: bufio, strings, sync, time, context, …"
	case strings.HasPrefix(dso, "[vdso]") || strings.Contains(dso, "vdso"):
		return "vDSO (clock reads)"
	}
	return "other"
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// PrintShares writes shares as a table, groups under min percent folded.
func PrintShares(w io.Writer, title string, shares []Share) {
	fmt.Fprintf(w, "%s\n", title)
	var rest float64
	for _, s := range shares {
		if s.Percent < 1 {
			rest += s.Percent
			continue
		}
		fmt.Fprintf(w, "  %5.1f %%  %s\n", s.Percent, s.Group)
	}
	if rest > 0 {
		fmt.Fprintf(w, "  %5.1f %%  (groups under 1 %% each)\n", rest)
	}
}
