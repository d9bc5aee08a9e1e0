package tun

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// StateVersion is the [State.Version] that this package writes and reads.
const StateVersion = 1

// ErrCorruptState is wrapped by the error that [ReadState] and
// [ParseState] return when the file exists but does not hold a state this
// package can undo.
var ErrCorruptState = errors.New("corrupt state")

// State records the host changes of a running masque process, so that a
// later run can undo them if the process dies without doing so itself.
// It is written with [WriteState] before each change, naming what is
// about to be changed, and removed with [RemoveState] after a clean
// shutdown; [Undo] reverses it.
type State struct {
	// Version is StateVersion.
	Version int `json:"version"`
	// PID is the process that made the changes.
	PID int `json:"pid"`
	// Tun is the TUN link to delete.
	Tun string `json:"tun,omitempty"`
	// Routing is the policy routing to remove.
	Routing *Routing `json:"routing,omitempty"`
	// NFTables are the inet nftables tables to delete.
	NFTables []string `json:"nft_tables,omitempty"`
	// Sysctls maps a sysctl key, as SetSysctl takes it, to the value to
	// restore.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// ResolvConf is the resolver configuration to restore.
	ResolvConf *ResolvConf `json:"resolv_conf,omitempty"`
	// Resolved is the link whose DNS settings systemd-resolved holds.
	Resolved *ResolvedLink `json:"resolved,omitempty"`
	// Slot is the instance slot whose names Routing and the kill-switch
	// table are; 0, the names of the runs before instances, when absent.
	Slot Slot `json:"slot,omitempty"`
	// Claim is the path of the instance's claim of Slot in the instance
	// registry ([ClaimSlot]), which Undo removes once it has undone the
	// rest.
	Claim string `json:"claim,omitempty"`
}

// Validate reports every problem in s at once, joined with [errors.Join].
// A state that passes names nothing but what masque itself changes, so
// that a root-run [Undo] of a planted or garbled state touches nothing
// else: the routing table, mark and rule priorities are those of s.Slot
// (see [Slot]; all three of the same slot, so that an instance's undo
// cannot reach another's rules); the nftables tables are s.Slot's
// [Slot.KillSwitchTable] and [DefaultNATTable]; the sysctls
// are the forwarding ones (net/ipv4/ip_forward,
// net/ipv6/conf/all/forwarding) and a few of s.Tun's own (see
// tunSysctls), each with a decimal value; resolv.conf is
// [ManagedResolvConf], with its backup named [ResolvConfBackup]; the
// claim is a file of s.Slot directly in a directory named instances
// (see validateClaimPath). [ReadState] and [WriteState] also insist that the backup is in the
// state file's directory.
func (s *State) Validate() error {
	var errs []error
	if s.Version != StateVersion {
		errs = append(errs, fmt.Errorf("version: %d unsupported, want %d", s.Version, StateVersion))
	}
	if s.PID < 0 {
		errs = append(errs, fmt.Errorf("pid: %d negative", s.PID))
	}
	slot := s.Slot
	if !slot.Valid() {
		errs = append(errs, fmt.Errorf("slot: %d out of range 0..%d", s.Slot, MaxInstances-1))
		slot = 0 // check the names against slot 0's, to report them too
	}
	if s.Tun != "" {
		if err := validateLinkName(s.Tun, false); err != nil {
			errs = append(errs, fmt.Errorf("tun: %w", err))
		}
	}
	if s.Routing != nil {
		// Link, Routes and Excludes don't matter to Remove, but a state
		// that holds garbage there is corrupt all the same.
		if err := s.Routing.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("routing: %w", err))
		}
		errs = append(errs, s.Routing.validateOwn(slot)...)
	}
	own := slot.ownTables()
	for i, t := range s.NFTables {
		if err := validateTableName(t); err != nil {
			errs = append(errs, fmt.Errorf("nft_tables[%d]: %w", i, err))
		} else if !slices.Contains(own, t) {
			of, ok := slotOfKillSwitchTable(t)
			errs = append(errs, fmt.Errorf("nft_tables[%d]: %q is not one of masque's tables (%s)%s", i, t, strings.Join(own, ", "), slotSuffix(of, ok, slot)))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Sysctls)) {
		if err := validateSysctlKey(k); err != nil {
			errs = append(errs, fmt.Errorf("sysctls: %w", err))
		} else if !ownSysctl(k, s.Tun) {
			errs = append(errs, fmt.Errorf("sysctls: %q is not a sysctl masque sets", k))
		}
		if v := s.Sysctls[k]; !decimal(v) {
			errs = append(errs, fmt.Errorf("sysctls[%s]: value %q is not a decimal integer", k, v))
		}
	}
	if s.Claim != "" {
		if err := validateClaimPath(s.Claim, slot); err != nil {
			errs = append(errs, fmt.Errorf("claim: %w", err))
		}
	}
	if s.ResolvConf != nil {
		if err := s.ResolvConf.validate(); err != nil {
			errs = append(errs, err)
		} else if err := s.ResolvConf.validateOwn(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Resolved != nil {
		if err := s.Resolved.validate(); err != nil {
			errs = append(errs, err)
		} else if s.Resolved.Link != s.Tun {
			// masque registers DNS on its own TUN only: Revert would
			// drop another link's (a VPN's, a LAN's) DNS settings.
			errs = append(errs, fmt.Errorf("resolved: link %q is not the state's tun %q", s.Resolved.Link, s.Tun))
		}
	}
	return errors.Join(errs...)
}

// validateOwn checks that r names the table, mark and rule priorities of
// slot, a valid slot: Remove flushes the table and deletes the rules at
// the priorities, whoever put them there. A name of another slot is said
// to be so, for a state that mixes slots.
func (r *Routing) validateOwn(slot Slot) []error {
	var errs []error
	if t := r.table(); t != slot.Table() {
		of, ok := slotOfTable(t)
		errs = append(errs, fmt.Errorf("routing: table: %d is not masque's table %d (slot %d)%s", t, slot.Table(), slot, slotSuffix(of, ok, slot)))
	}
	if m := r.fwMark(); m != slot.FwMark() {
		of, ok := slotOfMark(m)
		errs = append(errs, fmt.Errorf("routing: fwmark: %#x is not masque's mark %#x (slot %d)%s", m, slot.FwMark(), slot, slotSuffix(of, ok, slot)))
	}
	if p := r.priority(); p != slot.RulePriority() {
		of, ok := slotOfPriority(p)
		errs = append(errs, fmt.Errorf("routing: rule_priority: %d is not masque's %d (slot %d)%s", p, slot.RulePriority(), slot, slotSuffix(of, ok, slot)))
	}
	return errs
}

// forwardingSysctls are the host-wide sysctls masqued sets.
var forwardingSysctls = []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"}

// tunSysctls are the sysctls of its own TUN that masque may set, by
// directory: net/ipv4/conf/<tun>/<name> and net/ipv6/conf/<tun>/<name>.
// They keep the TUN from acting as a LAN (router advertisements,
// redirects, autoconfiguration, reverse-path filtering).
var tunSysctls = map[string][]string{
	"net/ipv4/conf": {"accept_redirects", "accept_source_route", "forwarding", "rp_filter", "send_redirects"},
	"net/ipv6/conf": {"accept_ra", "accept_redirects", "accept_source_route", "addr_gen_mode", "autoconf", "disable_ipv6", "forwarding"},
}

// ownSysctl reports whether key, a valid sysctl key, is one masque sets:
// a forwarding sysctl, or one of tunSysctls of the TUN tunName (not of
// any other interface).
func ownSysctl(key, tunName string) bool {
	if slices.Contains(forwardingSysctls, key) {
		return true
	}
	if tunName == "" {
		return false
	}
	dir, name := path.Split(key)
	dir, link := path.Split(strings.TrimSuffix(dir, "/"))
	names, ok := tunSysctls[strings.TrimSuffix(dir, "/")]
	// all and default are no links: their sysctls are host-wide.
	return ok && link == tunName && link != "all" && link != "default" && slices.Contains(names, name)
}

// decimal reports whether v is a decimal integer as the sysctls masque
// sets hold: an optional minus sign and 1 to 10 digits.
func decimal(v string) bool {
	v = strings.TrimPrefix(v, "-")
	if len(v) == 0 || len(v) > 10 {
		return false
	}
	for _, c := range []byte(v) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// validateIn checks what only the state file's directory dir tells: the
// resolv.conf backup must be in it.
func (s *State) validateIn(dir string) error {
	if s.ResolvConf == nil {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if d := filepath.Dir(s.ResolvConf.Backup); d != abs {
		return fmt.Errorf("resolv_conf: backup %s is not in the state directory %s", s.ResolvConf.Backup, abs)
	}
	return nil
}

// WriteState writes s to path atomically: it creates path's directory
// with mode 0700 if needed, writes a temporary file of mode 0600 next to
// path, syncs it and renames it over path. A directory that fails
// ReadState's trust check, whether it existed or not, is refused with an
// error that wraps [ErrUntrustedState], and so is a state that fails
// [State.Validate] or names a resolv.conf backup outside the directory;
// nothing is written then. A zero Version is written as StateVersion and
// a zero PID as the calling process's; s itself is not modified.
func WriteState(path string, s *State) error {
	c := *s
	if c.Version == 0 {
		c.Version = StateVersion
	}
	if c.PID == 0 {
		c.PID = os.Getpid()
	}
	dir := filepath.Dir(path)
	if err := errors.Join(c.Validate(), c.validateIn(dir)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	// A directory that exists already must pass the same check as
	// ReadState's; one that does not is created 0700, and checked too.
	if err := checkStateDir(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("write state: %w", err)
		}
		if err := checkStateDir(dir); err != nil {
			return fmt.Errorf("write state: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	b, err := json.MarshalIndent(&c, "", "\t")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	b = append(b, '\n')
	if err := writeFileAtomic(path, b); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path by a file of mode 0600 holding b, creating
// path's directory (0700) if needed: a temporary file next to it, synced,
// renamed over it, and the directory synced.
func writeFileAtomic(path string, b []byte) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := writeTemp(dir, "."+base+".tmp*", 0o600, b)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	// Make the rename itself durable.
	d, err := os.Open(dir)
	if err != nil {
		return nil
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}

// writeTemp writes b to a new file in dir, named by pattern as
// os.CreateTemp names it, with mode, synced and closed, and returns its
// name; on error it leaves nothing behind.
func writeTemp(dir, pattern string, mode os.FileMode, b []byte) (name string, err error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return "", err
	}
	if _, err := f.Write(b); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// ReadState reads the state file at path. The file's directory must pass
// the trust check (owned by the effective user, not writable by group or
// others, a real directory, its ancestors likewise or sticky) and the file
// is opened without following a symbolic link and checked once open
// (regular, one link, owner, mode); otherwise the error wraps
// [ErrUntrustedState] and nothing of the file is read. When there is no
// directory or no file the error satisfies errors.Is(err,
// fs.ErrNotExist); when the file cannot be parsed or fails
// [State.Validate] the error wraps [ErrCorruptState].
func ReadState(path string) (*State, error) {
	dir := filepath.Dir(path)
	if err := checkStateDir(dir); err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	f, err := openTrusted("state file", path)
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	s, err := ParseState(b)
	if err == nil {
		if err = s.validateIn(dir); err != nil {
			s, err = nil, fmt.Errorf("%w: %v", ErrCorruptState, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read state %s: %w", path, err)
	}
	return s, nil
}

// ParseState parses a state file's contents strictly: unknown fields,
// trailing data and a state that fails [State.Validate] give an error that
// wraps [ErrCorruptState].
func ParseState(b []byte) (*State, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var s State
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: trailing data after state", ErrCorruptState)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	return &s, nil
}

// RemoveState removes the state file at path; a missing file is no
// error.
func RemoveState(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

// Undo reverses everything s names, in this order: it has
// systemd-resolved drop the TUN's DNS settings (while the link still
// exists, so that its index cannot name another), removes the policy
// routing, deletes the TUN link if it still exists (a link of that name
// that is not a TUN is left alone and reported), deletes each nftables
// table and restores each sysctl (sysctls that no longer exist, such as
// those of a deleted link, are skipped; those of a link named s.Tun that
// is not a TUN are left alone and reported), restores resolv.conf and,
// when all of that succeeded, removes the claim file s.Claim if it still
// names s.PID (a claim that another process holds is left alone; one
// kept after a failure goes on blocking the slot as a crash's). What is
// already gone is no error, so Undo is idempotent; it carries on past
// failures and returns them joined with [errors.Join].
//
// A state that fails [State.Validate] is refused whole: Undo then
// changes nothing and returns an error that wraps [ErrCorruptState].
// So is a state with a Claim whose registry or claim cannot be read, or
// whose slot another running process has claimed in the calling thread's
// network namespace since: its names are that process's now, and the
// error wraps [ErrSlotTaken]. The calling process itself may hold the
// slot: a new run of a crashed instance claims its slot first, then
// undoes the crashed run's state, and keeps its own claim.
//
// Undo does not check whether process s.PID is still running; callers
// that might be undoing the changes of a live process check that first.
func Undo(s *State) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("undo: %w: %v", ErrCorruptState, err)
	}
	release, err := checkStateClaim(s)
	if err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	var errs []error
	if s.Resolved != nil {
		if err := s.Resolved.Revert(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Routing != nil {
		if err := s.Routing.Remove(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Tun != "" {
		if err := deleteTUNLink(s.Tun); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range s.NFTables {
		if err := DeleteTable(t); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Sysctls)) {
		if !slices.Contains(forwardingSysctls, k) {
			// One of s.Tun's own: mostly gone with the TUN. A link of
			// that name that is not a TUN is not ours to change.
			li, err := lookupLink(s.Tun)
			if err != nil {
				errs = append(errs, fmt.Errorf("restore sysctl %s: %w", k, err))
				continue
			}
			if li.exists && !li.tun {
				errs = append(errs, fmt.Errorf("restore sysctl %s: %s is a %s link, not tun: left alone", k, s.Tun, li.kind))
				continue
			}
		}
		if _, err := SetSysctl(k, s.Sysctls[k]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if s.ResolvConf != nil {
		if err := s.ResolvConf.Restore(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	if err := release(); err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	return nil
}
