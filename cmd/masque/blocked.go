package main

// A corrupt state file (truncated by a crash, overwritten, garbage) says
// nothing about what the masque up that wrote it changed: its routes may
// still pull traffic into a TUN that is gone, its kill switch may still be
// up or not, resolv.conf may still name the tunnel's DNS servers. masque
// up then starts in the blocking state rather than in an open one, and
// masque down removes what masque always creates by its well-known names.
//
// masque up after a corrupt state file, step by step, each step safe to
// interrupt (a crash at any point leaves either the corrupt file, which
// starts all of this again, or a valid state naming the kill switch):
//
//  1. Refuse if a masque still answers on the status socket: its state
//     file was damaged under it, and its TUN and routes are live.
//  2. Put up the kill switch, the same table a normal run installs (the
//     tunnel's TUN, the tunnel socket's mark, loopback and what --exclude
//     and --allow-lan allow); from here on nothing else leaves the host.
//  3. Copy the corrupt file to state.json.corrupt for the user to inspect.
//     A copy, not a rename: state.json must exist at every instant, or a
//     crash would leave the kill switch table named by no state at all.
//  4. Atomically replace state.json by a fresh state that names the kill
//     switch and the well-known leftovers (written before they change).
//  5. Remove the leftovers by name (tun.Leftovers): masque's policy rules
//     and table, the TUN named by --tun if it is a detached TUN, the
//     gateway table of --allow-forward and the resolv.conf backup in the
//     state directory, restored byte for byte.
//     Once they are gone, the state names only the kill switch.
//  6. Bring the tunnel up as usual. Once it is up, --kill-switch=false
//     (or a split tunnel's default) removes the kill switch; otherwise the
//     normal kill switch replaces the blocking one in one atomic batch.
//  7. If the run ends in any way before the tunnel was up (no server,
//     refused credentials, Ctrl-C), everything but the kill switch is
//     undone, the state names only the kill switch, and the error says
//     the host stays blocked and that masque down unblocks it.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/masque-vpn/masque/tun"
)

// corruptSuffix names the copy of a corrupt state file kept for the user.
// A later corrupt file replaces an earlier copy: the newest one is the
// one that matters, and /run is no place to pile them up.
const corruptSuffix = ".corrupt"

// resolvConf is what masque up changes with --accept-dns: /etc/resolv.conf,
// with its original saved in the state directory.
func resolvConf(stateDir string) *tun.ResolvConf {
	return &tun.ResolvConf{Path: tun.ManagedResolvConf, Backup: filepath.Join(stateDir, tun.ResolvConfBackup)}
}

// killSwitchConfig is the kill switch of a run with configuration c, the
// blocking one after a corrupt state file included; mark is the tunnel
// socket's firewall mark.
func killSwitchConfig(c *upConfig, mark uint32) tun.KillSwitchConfig {
	allow := slices.Clone(c.excludes)
	if c.allowLAN {
		allow = append(allow, lanPrefixes(c.tun)...)
	}
	return tun.KillSwitchConfig{Table: c.slot.KillSwitchTable(), Tun: c.tun, FwMark: mark, Allow: allow, AllowForward: c.allowForward}
}

// startBlocked is masque up's answer to the corrupt state file at
// statePath (steps 1 to 5 above; readErr is why it is corrupt). It returns
// the fresh state, already written, which names the kill switch it put
// up.
func startBlocked(c *upConfig, statePath string, readErr error, logger *slog.Logger) (*tun.State, error) {
	sock := filepath.Join(c.stateDir, statusSocket)
	if statusAnswers(sock) {
		return nil, fmt.Errorf("%v, and a masque is running (its status socket %s answers): stop it first", readErr, sock)
	}
	ks := killSwitchConfig(c, c.slot.FwMark())
	if _, err := tun.NewKillSwitch(ks); err != nil {
		// Without a kill switch there is no blocking state to start in.
		return nil, fmt.Errorf("%v, and the host cannot be blocked: %w (masque down removes masque's leftovers by name)", readErr, err)
	}
	aside, err := copyAside(statePath)
	if err != nil {
		// The copy is for the user's curiosity, not for safety.
		logger.Warn("corrupt state file not kept", "path", statePath, "err", err)
	}
	rc := resolvConf(c.stateDir)
	st := &tun.State{
		Version:    tun.StateVersion,
		PID:        os.Getpid(),
		Tun:        c.tun,
		Slot:       c.slot,
		Claim:      c.claimPath,
		Routing:    c.routing(),
		NFTables:   []string{ks.Table, c.slot.GatewayTable()},
		ResolvConf: rc,
	}
	if err := tun.WriteState(statePath, st); err != nil {
		return nil, stillBlocked(c.stateDir, c.slot.KillSwitchTable(), err, reasonStartedBlocked)
	}
	logger.Warn("state file corrupt: all traffic blocked until the tunnel is up",
		"path", statePath, "copy", aside, "kill_switch", ks.Table, "err", readErr)
	r := c.slot.Routing()
	done, err := (&tun.Leftovers{Tun: c.tun, Routing: &r, NFTables: []string{c.slot.GatewayTable()}, ResolvConf: rc}).Remove()
	for _, d := range done {
		logger.Info("leftover of the corrupt state", "done", d)
	}
	if err != nil {
		// What is still there is named by st, so the run's own clean-up
		// retries it; the blocking state holds meanwhile.
		logger.Warn("leftovers not all removed", "err", err)
		return st, nil
	}
	// The leftovers are gone (or, like a TUN that a process holds, were
	// never ours): from here st names what this run changes, and an undo
	// after a failure touches nothing else.
	st = &tun.State{Version: tun.StateVersion, PID: os.Getpid(), Slot: c.slot, Claim: c.claimPath, NFTables: []string{ks.Table}}
	if err := tun.WriteState(statePath, st); err != nil {
		return nil, stillBlocked(c.stateDir, c.slot.KillSwitchTable(), err, reasonStartedBlocked)
	}
	return st, nil
}

// keepBlocked ends a run that started blocked and never got its tunnel up
// (step 7), or one whose tunnel ended for good with the kill switch on (a
// forced exit: the server refused the credentials or gave other
// addresses): it undoes everything st names but the kill switch, leaves a
// state that names only the kill switch, and returns cause (nil: the user
// interrupted it) saying the host stays blocked, and why.
func keepBlocked(stateDir, statePath string, st *tun.State, cause error, why string) error {
	if cause == nil {
		cause = errors.New("interrupted before the tunnel was up")
	}
	rest := *st
	ks := st.Slot.KillSwitchTable()
	rest.NFTables = slices.DeleteFunc(slices.Clone(st.NFTables), func(t string) bool { return t == ks })
	rest.Claim = "" // the blocked state below keeps the slot
	if err := tun.Undo(&rest); err != nil {
		// st, still on disk, names what is left for masque down.
		return stillBlocked(stateDir, ks, fmt.Errorf("%w; %v", cause, oneLine(err)), why)
	}
	blocked := &tun.State{Version: tun.StateVersion, PID: os.Getpid(), Slot: st.Slot, Claim: st.Claim, NFTables: []string{ks}}
	if err := tun.WriteState(statePath, blocked); err != nil {
		return stillBlocked(stateDir, ks, fmt.Errorf("%w; %v", cause, err), why)
	}
	return stillBlocked(stateDir, ks, cause, why)
}

// Why keepBlocked leaves the host blocked.
const (
	reasonStartedBlocked = "masque up started blocked (a corrupt state file, or a crashed run that left it up)"
	reasonForcedExit     = "the tunnel ended for good with the kill switch on, and nothing may leak"
)

// stillBlocked adds to err that the host stays blocked, why, and how to
// undo it.
func stillBlocked(stateDir, table string, err error, why string) error {
	down := "masque down"
	if stateDir != defaultStateDir {
		down += " --state-dir " + stateDir
	}
	return fmt.Errorf("%w; the host stays blocked by the kill switch (nftables table inet %s) because %s: %s unblocks it",
		err, table, why, down)
}

// sweepCorrupt is masque down's answer to a corrupt state file: it removes
// masque's leftovers by their well-known names, the kill switch included
// (down is the user's request to restore the host), then moves the
// corrupt file aside. It returns what it did, one phrase each. If
// anything could not be removed the corrupt file stays in place, so that
// masque down (or up) tries again. The names are those of the slot that
// the instance registry says the crashed run of stateDir held (slot 0,
// the names of a masque without instances, if it says nothing).
func sweepCorrupt(stateDir, statePath, tunName string) (done []string, err error) {
	slot := tun.Slot(0)
	claims, err := tun.Claims(tun.DefaultRegistryDir)
	if err != nil {
		return nil, fmt.Errorf("%v (state file %s left in place)", err, statePath)
	}
	for _, c := range claims {
		if c.StateDir == stateDir && !c.Alive {
			slot = c.Slot
		}
	}
	r := slot.Routing()
	l := &tun.Leftovers{
		Tun:        tunName,
		Routing:    &r,
		NFTables:   []string{slot.KillSwitchTable(), slot.GatewayTable()},
		ResolvConf: resolvConf(stateDir),
	}
	done, err = l.Remove()
	if err != nil {
		return done, fmt.Errorf("%v (state file %s left in place: run masque down again)", oneLine(err), statePath)
	}
	if len(done) == 0 {
		done = append(done, "found none of masque's leftovers")
	}
	aside := statePath + corruptSuffix
	if err := os.Rename(statePath, aside); err != nil {
		return done, fmt.Errorf("move corrupt state file aside: %w", err)
	}
	if err := tun.ReleaseClaim(tun.DefaultRegistryDir, slot); err != nil {
		return done, err
	}
	return append(done, "moved the corrupt state file to "+aside), nil
}

// copyAside copies the state file at path to path+corruptSuffix, mode
// 0600, and returns the copy's name.
func copyAside(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	aside := path + corruptSuffix
	if err := os.WriteFile(aside+".tmp", b, 0o600); err != nil {
		return "", err
	}
	if err := os.Rename(aside+".tmp", aside); err != nil {
		os.Remove(aside + ".tmp")
		return "", err
	}
	return aside, nil
}

// statusAnswers reports whether a process listens on the status socket:
// a live masque. A socket file left by a killed one refuses connections.
func statusAnswers(sock string) bool {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// resolveMarked resolves the host of hostport, unless it is an address
// already, with DNS queries from sockets that carry mark: with the
// blocking kill switch up, only such packets may leave, and the server's
// name is the one query a normal start makes outside the tunnel too. (A
// local stub resolver such as systemd-resolved forwards the query from
// unmarked sockets of its own, which stay blocked; --server with an
// address avoids the lookup.)
func resolveMarked(ctx context.Context, hostport string, mark uint32) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return hostport, nil
	}
	d := &net.Dialer{Control: markControl(mark)}
	r := &net.Resolver{PreferGo: true, Dial: d.DialContext}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", host, err)
	}
	// Prefer IPv4, as net.ResolveUDPAddr does for "udp".
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
		switch {
		case a.Unmap().Is4() == b.Unmap().Is4():
			return 0
		case a.Unmap().Is4():
			return -1
		}
		return 1
	})
	return net.JoinHostPort(addrs[0].Unmap().String(), port), nil
}

// oneLine joins the lines of err's text: the CLI prints one error line.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// untrustedState turns ReadState's or WriteState's refusal of a state
// directory or file that others could have written into one line, a
// configuration error (exit 2): nothing of the state was acted on.
func untrustedState(err error) error {
	return usagef("%v: refused (state directory and file must be root's and not writable by group or others: chown root and chmod go-w them, or use another --state-dir)", err)
}

// isCorrupt reports whether err is ReadState's for a corrupt file.
func isCorrupt(err error) bool {
	return errors.Is(err, tun.ErrCorruptState) && !errors.Is(err, fs.ErrNotExist)
}
