package tun

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"testing"

	"github.com/masque-vpn/masque/tun/internal/nstest"
)

func TestTUNOwner(t *testing.T) {
	nstest.New(t)
	d := createTestTUN(t)
	if pid, ok := TUNOwner(d.Name()); !ok || pid != os.Getpid() {
		t.Errorf("TUNOwner(%s) = %d, %v, want this process (%d)", d.Name(), pid, ok, os.Getpid())
	}
	for _, name := range []string{"mqnone0", "mqtest", "mqtest00", "", "a/b"} {
		if pid, ok := TUNOwner(name); ok {
			t.Errorf("TUNOwner(%q) = %d, true, want none", name, pid)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if pid, ok := TUNOwner(d.Name()); ok {
		t.Errorf("TUNOwner(%s) after Close = %d, true, want none", d.Name(), pid)
	}
}

// helperTUN is the TUN that TestTUNOwnerHelper creates.
const helperTUN = "mqhold0"

// TestTUNOwnerHelper is the child process of TestTUNOwnerOtherProcess:
// it holds helperTUN open until its stdin closes.
func TestTUNOwnerHelper(t *testing.T) {
	if os.Getenv("MASQUE_TUN_OWNER_HELPER") != "1" {
		t.Skip("the child process of TestTUNOwnerOtherProcess")
	}
	d, err := Create(Config{Name: helperTUN})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	os.Stdout.WriteString("ready\n")
	io.Copy(io.Discard, os.Stdin)
}

// TestTUNOwnerOtherProcess checks that TUNOwner finds another process's
// TUN in its own namespace, and not from another namespace.
func TestTUNOwnerOtherProcess(t *testing.T) {
	nstest.New(t)
	// The child inherits this thread's namespace.
	cmd := exec.Command(os.Args[0], "-test.run=^TestTUNOwnerHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "MASQUE_TUN_OWNER_HELPER=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	ready := false
	for !ready && sc.Scan() {
		ready = sc.Text() == "ready"
		t.Logf("helper: %s", sc.Text())
	}
	// The rest of its output goes once stdin closes and it exits; Wait
	// comes after the reads, as exec wants.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sc.Scan() {
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		<-done
		cmd.Wait()
	})
	if !ready {
		t.Fatal("the helper did not get ready")
	}
	if pid, ok := TUNOwner(helperTUN); !ok || pid != cmd.Process.Pid {
		t.Errorf("TUNOwner(%s) = %d, %v, want the helper (%d)", helperTUN, pid, ok, cmd.Process.Pid)
	}
	nstest.New(t) // this thread moves on to a second namespace
	if pid, ok := TUNOwner(helperTUN); ok {
		t.Errorf("TUNOwner(%s) from another namespace = %d, true, want none", helperTUN, pid)
	}
}
