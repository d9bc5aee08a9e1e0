package tun

import "fmt"

// ConflictReason says why an instance cannot start next to another.
type ConflictReason int

// The reasons of a [ConflictError], in the order [CheckConflicts] looks
// for them.
const (
	// ConflictRunning: an instance of the same name is running.
	ConflictRunning ConflictReason = iota + 1
	// ConflictCrashed: an instance of another name crashed and left its
	// kernel resources (its kill switch may block the host).
	ConflictCrashed
	// ConflictTun: a running instance has the same TUN.
	ConflictTun
	// ConflictFullTunnel: both would be full tunnels; the second one's
	// routes would shadow the first one's.
	ConflictFullTunnel
	// ConflictTheirKillSwitch: a running instance's kill switch would
	// drop the new one's traffic.
	ConflictTheirKillSwitch
	// ConflictOurKillSwitch: the new instance's kill switch would drop a
	// running instance's traffic.
	ConflictOurKillSwitch
)

var conflictNames = map[ConflictReason]string{
	ConflictRunning:         "running",
	ConflictCrashed:         "crashed",
	ConflictTun:             "tun",
	ConflictFullTunnel:      "full tunnel",
	ConflictTheirKillSwitch: "their kill switch",
	ConflictOurKillSwitch:   "our kill switch",
}

// String returns r's name, such as "full tunnel".
func (r ConflictReason) String() string {
	if n, ok := conflictNames[r]; ok {
		return n
	}
	return fmt.Sprintf("ConflictReason(%d)", int(r))
}

// ConflictError is the error of [CheckConflicts] and [ClaimSlot] when
// another instance is in the way. Its message is one line naming that
// instance, such as
//
//	masque instance "work" is already running (pid 123, state /run/masque/work)
type ConflictError struct {
	// Reason says what is in the way.
	Reason ConflictReason
	// Claim is the instance in the way: a running one, or a crashed one
	// with leftovers.
	Claim Claim
	// Want is the instance that cannot start.
	Want Claim
}

// Error returns the conflict in one line that names the instance in the
// way and what to do about it.
func (e *ConflictError) Error() string {
	c := &e.Claim
	switch e.Reason {
	case ConflictRunning:
		return fmt.Sprintf("masque instance %q is already running (pid %d, state %s)", c.Instance, c.PID, c.StateDir)
	case ConflictCrashed:
		return fmt.Sprintf("host blocked by a crashed masque up (instance %q): run masque down %s", c.Instance, c.Instance)
	case ConflictTun:
		return fmt.Sprintf("tun %s is instance %q's (pid %d): give instance %q another --tun", c.Tun, c.Instance, c.PID, e.Want.Instance)
	case ConflictFullTunnel:
		return fmt.Sprintf("instance %q (pid %d) is a full tunnel already: only one full tunnel at a time; use --route for a split tunnel", c.Instance, c.PID)
	case ConflictTheirKillSwitch:
		return fmt.Sprintf("instance %q (pid %d) has its kill switch on, which would drop the traffic of instance %q: run masque down %s first",
			c.Instance, c.PID, e.Want.Instance, c.Instance)
	case ConflictOurKillSwitch:
		return fmt.Sprintf("a kill switch of instance %q would drop the traffic of instance %q (pid %d): use --kill-switch=false next to it",
			e.Want.Instance, c.Instance, c.PID)
	}
	return fmt.Sprintf("instance %q (pid %d) conflicts with instance %q (%v)", c.Instance, c.PID, e.Want.Instance, e.Reason)
}

// CheckConflicts returns a [*ConflictError] if instance want cannot
// start next to the claims live (as [Claims] returns them), and nil if it
// can. Claims that are not Alive count only when they have Leftovers: a
// crash of another instance blocks want, one of want's own instance does
// not (the new run takes its slot over and undoes what it recorded).
// Among running instances, want may not share the name or the TUN, may
// not be a second full tunnel, and may not start while either side has a
// kill switch, since a kill switch lets out only its own tunnel's
// traffic. The first conflict is reported, by the reasons' order and then
// by live's.
func CheckConflicts(live []Claim, want Claim) error {
	for r := ConflictRunning; r <= ConflictOurKillSwitch; r++ {
		for _, c := range live {
			if conflicts(r, &c, &want) {
				return &ConflictError{Reason: r, Claim: c, Want: want}
			}
		}
	}
	return nil
}

// conflicts reports whether c is in want's way for reason r.
func conflicts(r ConflictReason, c, want *Claim) bool {
	if r == ConflictCrashed {
		return !c.Alive && c.Leftovers && c.Instance != want.Instance
	}
	if !c.Alive {
		return false
	}
	switch r {
	case ConflictRunning:
		return c.Instance == want.Instance
	case ConflictTun:
		return c.Tun == want.Tun
	case ConflictFullTunnel:
		return c.FullTunnel && want.FullTunnel
	case ConflictTheirKillSwitch:
		return c.KillSwitch
	case ConflictOurKillSwitch:
		return want.KillSwitch
	}
	return false
}
