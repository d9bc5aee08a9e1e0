// Package tun is the kernel side of a masque host: it creates the TUN
// device that carries tunnelled IP packets, installs the policy routing
// that steers host traffic into it (client), sets up masquerading and
// forwarding sysctls (server), and records everything it changes in a
// state file so that a later run can undo it after a crash.
//
// Client instances side by side each hold a [Slot], which names their
// routing table, mark, rule priorities and kill switch, claimed per
// network namespace in a registry ([ClaimSlot], [CheckConflicts]); a
// state names its own slot's names only, so that no undo reaches another
// instance's.
//
// Every function acts in the network namespace of the calling OS thread.
// Callers that work in another namespace lock their goroutine to a thread
// in that namespace first (see internal/nstest); [NAT] remembers the
// namespace it was created in.
//
// The package knows nothing about QUIC, HTTP or MASQUE; it only offers
// the packet device and the host configuration around it. Everything but
// [SetSysctl], [ReadSysctl] and the state file functions is Linux-only: elsewhere it
// returns an error that wraps [errors.ErrUnsupported].
package tun
