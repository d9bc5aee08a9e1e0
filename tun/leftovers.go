package tun

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Leftovers names what a masque process may have left on the host, by the
// well-known names it always uses, for when no readable state file
// records its changes: the file was truncated or overwritten, so [Undo]
// has nothing to go by. [Leftovers.Remove] removes what exists of it.
type Leftovers struct {
	// Tun is the TUN link to delete. A link of that name that is not a
	// TUN, or a TUN that a process still has open, is not a leftover and
	// is left alone: a masque process's TUN goes away with the process.
	Tun string
	// Routing is the policy routing to remove; as for [Routing.Remove],
	// only Table and RulePriority matter.
	Routing *Routing
	// NFTables are the inet nftables tables to delete.
	NFTables []string
	// ResolvConf is put back from its Backup when the backup exists.
	ResolvConf *ResolvConf
}

// Remove removes what exists of l, in [Undo]'s order, and returns one
// phrase for each thing it removed, restored or deliberately left alone,
// such as "deleted tun masque0". What does not exist is skipped without a
// word, so a second Remove returns no phrases: Remove is idempotent. It
// carries on past failures and returns them joined with [errors.Join].
func (l *Leftovers) Remove() (done []string, err error) {
	var errs []error
	if r := l.Routing; r != nil {
		rules, routes, err := r.installed()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("remove routing: %w", err))
		case rules+routes == 0:
		default:
			if err := r.Remove(); err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, fmt.Sprintf("removed policy routing (%d rules at priority %d-%d, %d routes in table %d)",
					rules, r.priority(), r.priority()+1, routes, r.table()))
			}
		}
	}
	if l.Tun != "" {
		li, err := lookupLink(l.Tun)
		switch {
		case err != nil:
			errs = append(errs, err)
		case !li.exists:
		case !li.tun:
			done = append(done, fmt.Sprintf("left link %s alone: a %s link, not a TUN", l.Tun, li.kind))
		case li.attached:
			done = append(done, fmt.Sprintf("left tun %s alone: a process still has it open", l.Tun))
		default:
			if err := deleteTUNLink(l.Tun); err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, "deleted tun "+l.Tun)
			}
		}
	}
	for _, t := range l.NFTables {
		ok, err := TableExists(t)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("delete nft table inet %s: %w", t, err))
		case !ok:
		default:
			if err := DeleteTable(t); err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, "deleted nftables table inet "+t)
			}
		}
	}
	if rc := l.ResolvConf; rc != nil {
		_, err := os.Stat(rc.Backup)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			errs = append(errs, fmt.Errorf("resolv.conf: %w", err))
		default:
			if err := rc.Restore(); err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, fmt.Sprintf("restored %s from %s", rc.Path, rc.Backup))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return done, fmt.Errorf("remove leftovers: %w", err)
	}
	return done, nil
}

// linkInfo is what lookupLink found.
type linkInfo struct {
	exists   bool
	kind     string // netlink's link type, such as "tuntap" or "veth"
	tun      bool   // a TUN (not a TAP)
	attached bool   // a TUN with a queue a process has open
}
