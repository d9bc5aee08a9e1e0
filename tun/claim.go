package tun

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// DefaultRegistryDir is the instance registry of masque up: the
// directory of the claims that say which instance holds which [Slot].
const DefaultRegistryDir = "/run/masque/instances"

// ErrSlotTaken is wrapped by the error that [Undo] returns when the slot
// its state names is held by another running instance now: the state is
// stale, and the names it holds are that instance's.
var ErrSlotTaken = errors.New("slot taken by another instance")

// Claim says which instance holds a slot in one network namespace. It is
// kept in the registry as a file of mode 0600 named
// <netns>.<slot>.json, where netns is the inode number of the
// namespace, holding the fields with JSON names; [ClaimSlot] writes it,
// [Claims] reads it back, [ReleaseClaim] and [Undo] remove it.
type Claim struct {
	// Slot is the slot held; the file's name holds it.
	Slot Slot `json:"-"`
	// PID is the process holding the slot. In ClaimSlot's argument 0
	// means the calling process.
	PID int `json:"pid"`
	// Instance is the instance's name (its profile's): 1 to 32 of a-z,
	// 0-9, - and _, beginning with a letter or digit.
	Instance string `json:"instance"`
	// StateDir is the instance's state directory, a clean absolute path.
	StateDir string `json:"state_dir"`
	// Tun is the instance's TUN link.
	Tun string `json:"tun"`
	// FullTunnel says whether the instance routes everything (0.0.0.0/0,
	// ::/0) into its TUN.
	FullTunnel bool `json:"full_tunnel"`
	// KillSwitch says whether the instance has its kill switch on.
	KillSwitch bool `json:"kill_switch"`

	// Alive and Leftovers are what Claims found, not part of the file.

	// Alive says whether PID is a running masque.
	Alive bool `json:"-"`
	// Leftovers says whether Slot's kernel resources exist in the
	// namespace: rules at its priorities, routes in its table or its
	// kill-switch table. Those of a claim that is not Alive were left by
	// a crash, and may keep the host blocked.
	Leftovers bool `json:"-"`
}

// instanceName is what an instance may be called; cmd/masque checks a
// profile's name against the same pattern.
var instanceName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// validate reports every problem in c at once.
func (c *Claim) validate() error {
	var errs []error
	if !c.Slot.Valid() {
		errs = append(errs, fmt.Errorf("slot: %d out of range 0..%d", c.Slot, MaxInstances-1))
	}
	if c.PID <= 0 {
		errs = append(errs, fmt.Errorf("pid: %d not positive", c.PID))
	}
	if !instanceName.MatchString(c.Instance) {
		errs = append(errs, fmt.Errorf("instance: %q is not 1-32 of a-z, 0-9, - and _", c.Instance))
	}
	if err := validateStateDir(c.StateDir); err != nil {
		errs = append(errs, fmt.Errorf("state_dir: %w", err))
	}
	if err := validateLinkName(c.Tun, false); err != nil {
		errs = append(errs, fmt.Errorf("tun: %w", err))
	}
	return errors.Join(errs...)
}

// validateStateDir checks that dir is a clean absolute path, as a claim
// names its instance's state directory.
func validateStateDir(dir string) error {
	switch {
	case dir == "":
		return errors.New("empty")
	case strings.ContainsRune(dir, 0):
		return errors.New("contains NUL")
	case len(dir) > 4095:
		return errors.New("longer than PATH_MAX")
	case !filepath.IsAbs(dir) || filepath.Clean(dir) != dir:
		return fmt.Errorf("%q is not a clean absolute path", dir)
	}
	return nil
}

// claimFileName is the name of the claim of slot s in the network
// namespace whose inode number is ns.
func claimFileName(ns uint64, s Slot) string {
	return strconv.FormatUint(ns, 10) + "." + strconv.Itoa(int(s)) + ".json"
}

// parseClaimFileName parses a claim file's name as claimFileName writes
// it; any other spelling (leading zeros, a slot out of range) is not a
// claim's.
func parseClaimFileName(name string) (ns uint64, s Slot, ok bool) {
	rest, ok := strings.CutSuffix(name, ".json")
	if !ok {
		return 0, 0, false
	}
	nsPart, slotPart, ok := strings.Cut(rest, ".")
	if !ok || nsPart == "" || nsPart[0] < '1' || nsPart[0] > '9' {
		return 0, 0, false
	}
	ns, err := strconv.ParseUint(nsPart, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	s, ok = parseSlot(slotPart)
	return ns, s, ok
}

// maxClaimSize bounds what is read of a claim file.
const maxClaimSize = 16 << 10

// parseClaim parses the claim file called name holding b, strictly:
// unknown fields, trailing data, a name not as claimFileName writes it
// and a claim that fails validate are errors.
func parseClaim(name string, b []byte) (ns uint64, c Claim, err error) {
	ns, slot, ok := parseClaimFileName(name)
	if !ok {
		return 0, Claim{}, fmt.Errorf("%q is not a claim's name (<netns>.<slot>.json)", name)
	}
	if len(b) > maxClaimSize {
		return 0, Claim{}, fmt.Errorf("longer than %d bytes", maxClaimSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, Claim{}, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return 0, Claim{}, errors.New("trailing data after claim")
	}
	c.Slot = slot
	if err := c.validate(); err != nil {
		return 0, Claim{}, err
	}
	return ns, c, nil
}

// marshalClaim returns c's file contents.
func marshalClaim(c *Claim) []byte {
	b, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("marshal claim: %v", err)) // strings, ints and bools only
	}
	return append(b, '\n')
}

// validateClaimPath checks that p can name the claim of slot s in a
// registry: a clean absolute path directly in a directory named
// instances, whose name is a claim's name of slot s. [Undo] removes it,
// so a state must name nothing else.
func validateClaimPath(p string, s Slot) error {
	if strings.ContainsRune(p, 0) || !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("%q is not a clean absolute path", p)
	}
	dir, name := filepath.Split(p)
	if filepath.Base(dir) != "instances" {
		return fmt.Errorf("%q is not in a directory named instances", p)
	}
	_, slot, ok := parseClaimFileName(name)
	if !ok {
		return fmt.Errorf("%q is not named <netns>.<slot>.json", p)
	}
	if slot != s {
		return fmt.Errorf("%q is the claim of slot %d, not of the state's slot %d", p, slot, s)
	}
	return nil
}
