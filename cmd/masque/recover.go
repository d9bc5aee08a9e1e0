package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/masque-vpn/masque/tun"
)

// recoverLeftovers undoes what a crashed masque left behind, refusing if
// the owner is still running, and returns the state for this run. After
// a corrupt state file (startBlocked), or a crashed run that left the kill
// switch up when this run wants one too, that state is blocked: the kill
// switch is up and recorded.
func recoverLeftovers(c *upConfig, statePath string, logger *slog.Logger) (st *tun.State, blocked bool, err error) {
	fresh := &tun.State{Version: tun.StateVersion, PID: os.Getpid(), Slot: c.slot, Claim: c.claimPath}
	old, err := tun.ReadState(statePath)
	if errors.Is(err, tun.ErrUntrustedState) {
		return nil, false, untrustedState(err)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fresh, false, nil
	}
	if isCorrupt(err) {
		st, err := startBlocked(c, statePath, err, logger)
		return st, err == nil, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("state file %s: %v (remove it, or run masque down)", statePath, err)
	}
	if old.PID > 0 && old.PID != os.Getpid() && processAlive(old.PID) {
		return nil, false, fmt.Errorf("masque is already running as pid %d (state %s)", old.PID, statePath)
	}
	logger.Warn("undoing leftovers of a crashed run", "pid", old.PID)
	// A crashed run that had the kill switch up left the host blocked. If
	// this run wants a kill switch too, the host stays blocked until its
	// tunnel is up: its kill switch replaces the old one in one atomic
	// batch before the rest is undone, and the run starts blocked.
	wantKS := c.killSwitch
	if !c.killSwitchSet {
		wantKS = len(c.routes) == 0
	}
	ks := c.slot.KillSwitchTable()
	keep := wantKS && slices.Contains(old.NFTables, ks)
	if keep {
		if _, err := tun.NewKillSwitch(killSwitchConfig(c, c.slot.FwMark())); err != nil {
			return nil, false, fmt.Errorf("keep the kill switch of the crashed run: %w", err)
		}
		old.NFTables = slices.DeleteFunc(slices.Clone(old.NFTables), func(t string) bool { return t == ks })
		fresh.NFTables = []string{ks}
	}
	if err := tun.Undo(old); err != nil {
		return nil, false, fmt.Errorf("undo leftovers: %w", err)
	}
	if keep {
		if err := tun.WriteState(statePath, fresh); err != nil {
			return nil, false, stillBlocked(c.stateDir, c.slot.KillSwitchTable(), err, reasonStartedBlocked)
		}
		logger.Warn("the crashed run left the kill switch up: all traffic stays blocked until the tunnel is up")
		return fresh, true, nil
	}
	if err := tun.RemoveState(statePath); err != nil {
		return nil, false, err
	}
	return fresh, false, nil
}

func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A recycled PID of another program does not count.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(b)) == "masque"
}

// recordSysctls adds the sysctls in changed (key: the value to restore)
// that st does not hold yet and reports whether it added any: the first
// recorded value is the one from before masque changed it.
func recordSysctls(st *tun.State, changed map[string]string) bool {
	added := false
	for k, v := range changed {
		if _, ok := st.Sysctls[k]; ok {
			continue
		}
		if st.Sysctls == nil {
			st.Sysctls = map[string]string{}
		}
		st.Sysctls[k] = v
		added = true
	}
	return added
}
