// Command perfgroup prints where a process's CPU time went, from a
// perf.data file (perf record -g -p PID), summed into groups: the kernel's
// network path, wake-ups and system calls; Go's allocator, GC and
// scheduler; net/http, miekg/dns, crypto, the project's own code. The
// benchmarks use it (bench/dns/run.sh with PERF=1; bench/proxy has -perf).
//
//	perfgroup [-title TEXT] FILE
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/replproxy/replproxy/internal/benchproc"
)

func main() {
	title := flag.String("title", "", "the table's title (default: the file's name)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: perfgroup [-title TEXT] FILE (a perf.data file, from perf record -g)")
		os.Exit(2)
	}
	shares, err := benchproc.Group(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "perfgroup:", err)
		os.Exit(1)
	}
	if *title == "" {
		*title = "where the CPU time went (" + flag.Arg(0) + "):"
	}
	benchproc.PrintShares(os.Stdout, *title, shares)
}
