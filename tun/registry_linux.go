package tun

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The instance registry is a directory of claim files, one per slot held
// in a network namespace (see [Claim]). Every reader and writer holds an
// flock on the directory (shared to read, exclusive to change), so a
// claim is never seen half-written and a dead claim is never removed
// after another process has put its own in its place; the exclusive
// create (O_EXCL) is what makes a claim atomic even so.

// claimAttempts bounds ClaimSlot's retries when a claim file appears
// between its reading the registry and creating its own.
const claimAttempts = 4

// lockTimeout bounds the wait for the registry's lock, which its holders
// keep for a few netlink dumps at most.
const lockTimeout = 5 * time.Second

// ClaimSlot claims a slot for instance c in the registry dir (created
// 0700 if needed; it and its ancestors must pass the trust check of a
// state directory, or the error wraps [ErrUntrustedState]) for the
// calling thread's network namespace, and returns c with Slot set. c.PID
// 0 means the calling process; c.Slot is ignored.
//
// It first checks c against the claims of the namespace with
// [CheckConflicts] and returns its [*ConflictError] unchanged. It then
// takes the slot of a dead claim of c's own instance, a crashed run
// whose leftovers the new run undoes from its state (with [Undo], which
// lets the process that took a slot over undo its predecessor's state
// of it, or replaces, as the kill switch's table), or else the lowest
// free slot: one without a live claim whose kernel resources are gone
// (no rule at its priorities, no route in its table, no kill-switch
// table). A slot whose resources exist without a claim is some other
// program's (or an older masque's) and is skipped. Dead claims it takes
// are removed first.
func ClaimSlot(dir string, c Claim) (Claim, error) {
	if c.PID == 0 {
		c.PID = os.Getpid()
	}
	c.Slot, c.Alive, c.Leftovers = 0, true, false
	if err := c.validate(); err != nil {
		return Claim{}, fmt.Errorf("claim a slot: %w", err)
	}
	r, err := openRegistry(dir, true, true)
	if err != nil {
		return Claim{}, fmt.Errorf("claim a slot: %w", err)
	}
	defer r.close()
	for range claimAttempts {
		claims, use, err := r.survey()
		if err != nil {
			return Claim{}, fmt.Errorf("claim a slot: %w", err)
		}
		if err := CheckConflicts(present(claims), c); err != nil {
			return Claim{}, err
		}
		s, ok := pickSlot(&claims, &use, c.Instance)
		if !ok {
			return Claim{}, fmt.Errorf("claim a slot: all %d slots are in use in this network namespace", MaxInstances)
		}
		if claims[s] != nil {
			if err := r.remove(claimFileName(r.ns, s)); err != nil {
				return Claim{}, fmt.Errorf("claim slot %d: remove the dead claim: %w", s, err)
			}
		}
		c.Slot, c.Leftovers = s, use[s].leftovers
		err = r.create(&c)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return Claim{}, fmt.Errorf("claim slot %d: %w", s, err)
		}
		return c, nil
	}
	return Claim{}, fmt.Errorf("claim a slot: claims keep appearing in %s", dir)
}

// pickSlot returns the slot that a new instance called instance takes, as
// ClaimSlot describes, once CheckConflicts has passed: dead claims of
// other instances then have no leftovers.
func pickSlot(claims *[MaxInstances]*Claim, use *[MaxInstances]slotUse, instance string) (Slot, bool) {
	for s, c := range claims {
		if c != nil && !c.Alive && c.Instance == instance {
			return Slot(s), true
		}
	}
	for s, c := range claims {
		if (c == nil || !c.Alive) && !use[s].leftovers && !use[s].foreign {
			return Slot(s), true
		}
	}
	return 0, false
}

// Claims returns the claims of the calling thread's network namespace in
// the registry dir, by slot, each with Alive and Leftovers set. A
// registry that does not exist holds none. A claim file that cannot be
// read or parsed is an error: it could be a full tunnel's.
func Claims(dir string) ([]Claim, error) {
	r, err := openRegistry(dir, false, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list claims: %w", err)
	}
	defer r.close()
	claims, _, err := r.survey()
	if err != nil {
		return nil, fmt.Errorf("list claims: %w", err)
	}
	return present(claims), nil
}

// ReleaseClaim removes the claim of slot s in the calling thread's
// network namespace from the registry dir, if the calling process holds
// it or its process is dead; a claim that a running process holds is
// left alone and reported. No claim is no error.
func ReleaseClaim(dir string, s Slot) error {
	if !s.Valid() {
		return fmt.Errorf("release slot %d: out of range 0..%d", s, MaxInstances-1)
	}
	r, err := openRegistry(dir, true, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release slot %d: %w", s, err)
	}
	defer r.close()
	name := claimFileName(r.ns, s)
	c, err := r.read(name)
	switch {
	case err != nil:
		return fmt.Errorf("release slot %d: %w", s, err)
	case c == nil:
		return nil
	case c.PID != os.Getpid() && processAlive(c.PID):
		return fmt.Errorf("release slot %d: held by instance %q (pid %d), not by this process", s, c.Instance, c.PID)
	}
	if err := r.remove(name); err != nil {
		return fmt.Errorf("release slot %d: %w", s, err)
	}
	return nil
}

// checkStateClaim is Undo's look at the registry before it changes
// anything, for a state s with a Claim: in the calling thread's
// namespace, the slot's names are its claim's holder's, so a slot that
// another running process holds now is refused with an error wrapping
// [ErrSlotTaken]. The calling process may hold it: a new run of a
// crashed instance takes its slot over first, then undoes the crashed
// run's state. The release it returns, called once the undo has
// succeeded, removes the claim file s.Claim if it still holds s.PID; one
// that another process holds (the new run's) is left alone. A missing
// registry or claim is no error.
func checkStateClaim(s *State) (release func() error, err error) {
	noop := func() error { return nil }
	if s.Claim == "" {
		return noop, nil
	}
	dir, name := filepath.Dir(s.Claim), filepath.Base(s.Claim)
	r, err := openRegistry(dir, false, false)
	if errors.Is(err, fs.ErrNotExist) {
		return noop, nil
	}
	if err != nil {
		return nil, err
	}
	defer r.close()
	c, err := r.read(claimFileName(r.ns, s.Slot))
	if err != nil {
		return nil, err
	}
	if c != nil && c.PID != s.PID && c.PID != os.Getpid() && processAlive(c.PID) {
		return nil, fmt.Errorf("%w: slot %d is held by instance %q (pid %d) now, not by pid %d: the state is stale",
			ErrSlotTaken, s.Slot, c.Instance, c.PID, s.PID)
	}
	return func() error {
		r, err := openRegistry(dir, true, false)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("release claim: %w", err)
		}
		defer r.close()
		c, err := r.read(name)
		if err != nil {
			return fmt.Errorf("release claim: %w", err)
		}
		if c == nil || c.PID != s.PID {
			return nil
		}
		if err := r.remove(name); err != nil {
			return fmt.Errorf("release claim: %w", err)
		}
		return nil
	}, nil
}

// registry is an open, locked instance registry.
type registry struct {
	dir string
	fd  int    // the directory, flock-ed
	ns  uint64 // the calling thread's network namespace
}

// openRegistry checks that dir is trusted, creating it (0700) first if
// create and it does not exist, opens it and locks it, exclusively if
// exclusive. A dir that does not exist when !create gives an error that
// satisfies errors.Is(err, fs.ErrNotExist).
func openRegistry(dir string, exclusive, create bool) (*registry, error) {
	const what = "instance registry"
	err := checkTrustedDir(what, dir)
	if create && errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(dir, 0o700); err == nil {
			err = checkTrustedDir(what, dir)
		}
	}
	if err != nil {
		return nil, err
	}
	ns, err := netnsID()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, dir, err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for deadline := time.Now().Add(lockTimeout); ; time.Sleep(10 * time.Millisecond) {
		err = unix.Flock(fd, how|unix.LOCK_NB)
		if err == nil {
			return &registry{dir: dir, fd: fd, ns: ns}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) || time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("%s %s: lock: %w", what, dir, err)
		}
	}
}

// close unlocks the registry.
func (r *registry) close() { unix.Close(r.fd) }

// survey returns the claims of r's namespace, by slot, with Alive and
// Leftovers set, and the use of every slot.
func (r *registry) survey() (claims [MaxInstances]*Claim, use [MaxInstances]slotUse, err error) {
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return claims, use, err
	}
	for _, e := range entries {
		ns, s, ok := parseClaimFileName(e.Name())
		if !ok || ns != r.ns {
			continue
		}
		if claims[s], err = r.read(e.Name()); err != nil {
			return claims, use, err
		}
	}
	if use, err = slotUsage(); err != nil {
		return claims, use, err
	}
	for s, c := range claims {
		if c != nil {
			c.Alive, c.Leftovers = processAlive(c.PID), use[s].leftovers
		}
	}
	return claims, use, nil
}

// read reads and parses the claim file called name; one that does not
// exist is nil.
func (r *registry) read(name string) (*Claim, error) {
	path := filepath.Join(r.dir, name)
	f, err := openTrusted("claim", path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxClaimSize+1))
	if err != nil {
		return nil, fmt.Errorf("claim %s: %w", path, err)
	}
	_, c, err := parseClaim(name, b)
	if err != nil {
		return nil, fmt.Errorf("claim %s: %v (remove it if no masque up holds that slot)", path, err)
	}
	return &c, nil
}

// create writes c's claim file, failing with an error that wraps
// fs.ErrExist if there is one.
func (r *registry) create(c *Claim) error {
	path := filepath.Join(r.dir, claimFileName(r.ns, c.Slot))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(marshalClaim(c))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// remove removes the claim file called name; one that is gone is no
// error.
func (r *registry) remove(name string) error {
	if err := os.Remove(filepath.Join(r.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// present returns the claims that exist, by slot.
func present(claims [MaxInstances]*Claim) []Claim {
	var out []Claim
	for _, c := range claims {
		if c != nil {
			out = append(out, *c)
		}
	}
	return out
}

// netnsID returns the inode number of the calling thread's network
// namespace, which names the namespace's claims. It is the thread's, not
// the process's (/proc/self), as for every function of this package: a
// test moves one thread into a namespace of its own.
func netnsID() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("network namespace: %w", err)
	}
	return st.Ino, nil
}

// processAlive reports whether process pid is running masque (its comm
// is "masque"), so that a recycled PID of another program does not
// count; the calling process counts whatever its name.
func processAlive(pid int) bool {
	if pid == os.Getpid() {
		return true
	}
	if pid <= 0 {
		return false
	}
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return err == nil && strings.TrimSpace(string(b)) == "masque"
}

// ClaimPath is the file of slot s's claim in the registry dir, for the
// calling thread's network namespace: what [State.Claim] records.
func ClaimPath(dir string, s Slot) (string, error) {
	ns, err := netnsID()
	if err != nil {
		return "", fmt.Errorf("claim path: %w", err)
	}
	return filepath.Join(dir, claimFileName(ns, s)), nil
}
