package tun

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// TUNOwner returns the process that holds the TUN device called name
// open, so that a TUN that [Create] cannot take ("device or resource
// busy") is reported by its holder: a masque that uses another registry,
// or another program (wireguard-go). It looks at the /dev/net/tun file
// descriptors of every process, whose fdinfo the kernel ends with
// "iff:\t<name>" for an attached TUN, and counts only processes with a
// thread in the calling thread's network namespace, since link names are
// per namespace. Of several holders it returns the lowest PID; ok is
// false when it finds none (or may not read /proc).
func TUNOwner(name string) (pid int, ok bool) {
	if validateLinkName(name, false) != nil {
		return 0, false
	}
	ns, err := netnsID()
	if err != nil {
		return 0, false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	var pids []int
	for _, e := range entries {
		if p, err := strconv.Atoi(e.Name()); err == nil && p > 0 {
			pids = append(pids, p)
		}
	}
	slices.Sort(pids)
	want := []byte("iff:\t" + name)
	for _, p := range pids {
		if holdsTUN(p, want) && inNetns(p, ns) {
			return p, true
		}
	}
	return 0, false
}

// holdsTUN reports whether process pid has a /dev/net/tun file
// descriptor whose fdinfo holds the line iff.
func holdsTUN(pid int, iff []byte) bool {
	dir := "/proc/" + strconv.Itoa(pid)
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return false // gone, or a kernel thread
	}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(dir, "fd", fd.Name())); err != nil || target != "/dev/net/tun" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "fdinfo", fd.Name()))
		if err != nil {
			continue
		}
		for line := range bytes.Lines(b) {
			if bytes.Equal(bytes.TrimSuffix(line, []byte("\n")), iff) {
				return true
			}
		}
	}
	return false
}

// inNetns reports whether a thread of process pid is in the network
// namespace whose inode number is ns.
func inNetns(pid int, ns uint64) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, task := range tasks {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, task.Name(), "ns", "net"), &st) == nil && st.Ino == ns {
			return true
		}
	}
	return false
}
