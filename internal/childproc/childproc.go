// Package childproc starts the child processes of tests and tools (a
// throw-away PostgreSQL, Pebble) so that they die with the process that
// started them, crashed tests included, and reaps them.
//
// A child gets SIGKILL when its parent dies (Pdeathsig). Linux sends it when
// the thread that started the child exits, not the process, so Start starts
// the child and waits for it from a goroutine locked to its thread for the
// child's whole life; the goroutine returns still locked, which ends the
// thread once the child is gone.
package childproc

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Process is a running child, reaped by its own goroutine.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the child is reaped
	err  error         // from Wait; read after done
}

// Start starts cmd and reaps it in the background. Unless cmd.SysProcAttr
// names a parent-death signal, the child gets SIGKILL.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// Done is closed once the child has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is what exec.Cmd.Wait returned; call it once Done is closed.
func (p *Process) Err() error { return p.err }

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Stop sends sig to the child and kills it if it has not exited within
// timeout; either way the child has been reaped when Stop returns. It
// reports whether it had to kill it.
func (p *Process) Stop(sig os.Signal, timeout time.Duration) (killed bool) {
	_ = p.cmd.Process.Signal(sig) // fails only if it has exited already
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return false
	case <-timer.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return true
}

// Tail returns the last n lines of the file at path (a child's log), for
// error messages.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	b = bytes.TrimRight(b, "\n")
	for i, cut := len(b)-1, 0; i >= 0; i-- {
		if b[i] == '\n' {
			if cut++; cut == n {
				b = b[i+1:]
				break
			}
		}
	}
	if len(b) == 0 {
		return "(empty log)"
	}
	return string(b)
}
