package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// outBuf collects a process's stdout or stderr and wakes waiters on every
// write.
type outBuf struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newOutBuf() *outBuf { return &outBuf{changed: make(chan struct{})} }

func (o *outBuf) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *outBuf) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// lines returns the complete lines written so far and a channel closed on
// the next write.
func (o *outBuf) lines() ([]string, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.b.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return strings.Split(s[:i], "\n"), o.changed
	}
	return nil, o.changed
}

// proc is a long-running process started in a namespace. Its Cleanup stops
// it by PID: SIGTERM, then SIGKILL after a grace period.
type proc struct {
	name   string
	argv   []string
	cmd    *exec.Cmd
	stdout *outBuf
	stderr *outBuf
	done   chan struct{} // closed once Wait returned
	err    error         // Wait's error, valid after done

	// grace is how long Cleanup waits after SIGTERM before SIGKILL; a
	// process that needs the SIGKILL fails the test.
	grace time.Duration
	// wantExit0 makes Cleanup fail the test when the process exits non-zero
	// after its SIGTERM (the daemons promise a clean exit).
	wantExit0 bool
}

// procs records each test's processes, so that the topology's last Cleanup
// can print their output when the test failed.
var procs sync.Map // *testing.T → *[]*proc

// startProc starts argv inside namespace ns. The process gets SIGKILL if the
// test binary dies, and is stopped by t.Cleanup.
func startProc(t *testing.T, ns, name string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, argv: argv, stdout: newOutBuf(), stderr: newOutBuf(), done: make(chan struct{}), grace: 5 * time.Second}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = p.stderr
	// "ip netns exec" execs the program without forking, so the PID is the
	// program's and Pdeathsig survives the exec.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	list, _ := procs.LoadOrStore(t, new([]*proc))
	*list.(*[]*proc) = append(*list.(*[]*proc), p)
	t.Cleanup(func() {
		if p.exited() {
			return
		}
		took, killed := p.stop(p.grace)
		switch {
		case killed:
			t.Errorf("%s still ran %v after SIGTERM; killed it", name, took.Round(time.Millisecond))
		case p.wantExit0 && p.exitCode() != 0:
			t.Errorf("%s after SIGTERM: %s, want exit 0", name, p.exitString())
		}
	})
	return p
}

// logProcs logs the output of t's processes if t failed.
func logProcs(t *testing.T) {
	list, ok := procs.LoadAndDelete(t)
	if !ok || !t.Failed() {
		return
	}
	for _, p := range *list.(*[]*proc) {
		t.Logf("%s (%s) exit: %s\nstdout:\n%s\nstderr:\n%s", p.name, strings.Join(p.argv, " "), p.exitString(), tail(p.stdout.String(), 3000), tail(p.stderr.String(), 6000))
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitCode is the process's exit code, -1 if a signal killed it. Call it only
// after done.
func (p *proc) exitCode() int { return p.cmd.ProcessState.ExitCode() }

func (p *proc) exitString() string {
	if !p.exited() {
		return "running"
	}
	return p.cmd.ProcessState.String()
}

// wait waits up to d for the process to exit and reports whether it did.
func (p *proc) wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) {
	if !p.exited() {
		p.cmd.Process.Signal(sig)
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns how long
// the process took to exit after SIGTERM and whether it needed SIGKILL.
func (p *proc) stop(grace time.Duration) (took time.Duration, killed bool) {
	start := time.Now()
	p.signal(syscall.SIGTERM)
	if p.wait(grace) {
		return time.Since(start), false
	}
	p.cmd.Process.Kill()
	<-p.done
	return time.Since(start), true
}

// waitLine waits up to d for a complete line of out that satisfies match and
// returns it. It fails early if the process exits first.
func (p *proc) waitLine(out *outBuf, d time.Duration, match func(string) bool) (string, error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		lines, changed := out.lines()
		for _, l := range lines {
			if match(l) {
				return l, nil
			}
		}
		select {
		case <-changed:
		case <-p.done:
			// Catch output written just before the exit.
			lines, _ := out.lines()
			for _, l := range lines {
				if match(l) {
					return l, nil
				}
			}
			return "", fmt.Errorf("%s exited (%s) before printing the expected line", p.name, p.exitString())
		case <-deadline.C:
			return "", fmt.Errorf("%s printed no expected line within %v", p.name, d)
		}
	}
}

// result is the outcome of a process run to completion.
type result struct {
	stdout, stderr string
	code           int // -1: killed (timeout)
	took           time.Duration
}

// runIn runs argv inside ns to completion, bounded by d (SIGTERM at the
// deadline, SIGKILL 3 s later).
func runIn(t *testing.T, ns string, d time.Duration, argv ...string) result {
	t.Helper()
	r, err := runInErr(ns, d, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// runInErr is runIn for goroutines other than the test's: it returns an
// error when the command cannot be run at all.
func runInErr(ns string, d time.Duration, argv ...string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 3 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		return r, fmt.Errorf("run %s: %v", strings.Join(argv, " "), err)
	}
	if ctx.Err() != nil {
		r.code = -1
	}
	return r, nil
}

// mustRun runs a setup command in the root context (ip, sysctl via ip netns
// exec) and fails the test on error.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
