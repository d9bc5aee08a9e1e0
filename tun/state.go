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
}

// Validate reports every problem in s at once, joined with [errors.Join].
// A state that passes names nothing that Undo could not safely act on: no
// reserved routing table, no sysctl path outside /proc/sys.
func (s *State) Validate() error {
	var errs []error
	if s.Version != StateVersion {
		errs = append(errs, fmt.Errorf("version: %d unsupported, want %d", s.Version, StateVersion))
	}
	if s.PID < 0 {
		errs = append(errs, fmt.Errorf("pid: %d negative", s.PID))
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
	}
	for i, t := range s.NFTables {
		if err := validateTableName(t); err != nil {
			errs = append(errs, fmt.Errorf("nft_tables[%d]: %w", i, err))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Sysctls)) {
		if err := validateSysctlKey(k); err != nil {
			errs = append(errs, fmt.Errorf("sysctls: %w", err))
		}
		if strings.ContainsRune(s.Sysctls[k], 0) {
			errs = append(errs, fmt.Errorf("sysctls[%s]: value contains NUL", k))
		}
	}
	if s.ResolvConf != nil {
		if err := s.ResolvConf.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Resolved != nil {
		if err := s.Resolved.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WriteState writes s to path atomically: it creates path's directory
// with mode 0700 if needed, writes a temporary file of mode 0600 next to
// path, syncs it and renames it over path. A zero Version is written as
// StateVersion and a zero PID as the calling process's; s itself is not
// modified.
func WriteState(path string, s *State) error {
	c := *s
	if c.Version == 0 {
		c.Version = StateVersion
	}
	if c.PID == 0 {
		c.PID = os.Getpid()
	}
	if err := c.Validate(); err != nil {
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

func writeFileAtomic(path string, b []byte) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*") // mode 0600
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
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

// ReadState reads the state file at path. When there is none the error
// satisfies errors.Is(err, fs.ErrNotExist); when it cannot be parsed or
// fails [State.Validate] the error wraps [ErrCorruptState].
func ReadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	s, err := ParseState(b)
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
// those of a deleted link, are skipped) and restores resolv.conf. What is
// already gone is no error, so Undo is idempotent; it carries on past
// failures and returns them joined with [errors.Join].
//
// Undo does not check whether process s.PID is still running; callers
// that might be undoing the changes of a live process check that first.
func Undo(s *State) error {
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
	return nil
}
