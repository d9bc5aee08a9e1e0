package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/tun"
	"github.com/masque-vpn/masque/tun/resolvedtest"
)

const (
	stubResolvConf = "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\nnameserver 127.0.0.53\noptions edns0 trust-ad\n"
	ownResolvConf  = "# the host's own\nnameserver 192.0.2.53\n"
)

// TestApplyDNS checks which way each --dns-mode takes DNS, that the state
// file names what is about to change before it changes, and that a second
// configuration (after a reconnect) goes the same way.
func TestApplyDNS(t *testing.T) {
	lo, err := tun.NewResolvedLink("lo") // only the fake resolved hears of it
	if err != nil {
		t.Fatal(err)
	}
	servers := []netip.Addr{netip.MustParseAddr("198.18.2.53"), netip.MustParseAddr("2001:db8:2::53")}
	again := []netip.Addr{netip.MustParseAddr("198.18.2.54")}
	tests := []struct {
		name       string
		mode       string
		fake       bool // a fake resolved on the bus, else the bus alone
		resolvConf string
		want       string // "resolved" or "resolv.conf"
	}{
		{"auto with resolved", dnsAuto, true, stubResolvConf, "resolved"},
		{"auto without resolved", dnsAuto, false, stubResolvConf, "resolv.conf"},
		{"auto with a file of its own", dnsAuto, true, ownResolvConf, "resolv.conf"},
		{"file with resolved", dnsFile, true, stubResolvConf, "resolv.conf"},
		{"resolved forced", dnsResolved, true, ownResolvConf, "resolved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var fake *resolvedtest.Resolved
			if tt.fake {
				fake = resolvedtest.Start(t)
			} else {
				resolvedtest.StartBus(t)
			}
			dir := t.TempDir()
			old := tun.ManagedResolvConf
			tun.ManagedResolvConf = filepath.Join(dir, "resolv.conf")
			t.Cleanup(func() { tun.ManagedResolvConf = old })
			d := dnsConfig{
				mode:       tt.mode,
				resolvConf: filepath.Join(dir, "resolv.conf"),
				backup:     filepath.Join(dir, "state", "resolv.conf.orig"),
				link:       "lo",
			}
			if err := os.WriteFile(d.resolvConf, []byte(tt.resolvConf), 0o644); err != nil {
				t.Fatal(err)
			}
			statePath := filepath.Join(dir, "state", "state.json")
			st := &tun.State{Version: tun.StateVersion, Tun: d.link} // resolved settings belong to the state's TUN
			if err := tun.WriteState(statePath, st); err != nil {
				t.Fatal(err)
			}
			// What the state file says at the moment resolved is told.
			var mu sync.Mutex
			var seen []string
			if fake != nil {
				fake.OnCall(func(c resolvedtest.Call) {
					s, err := tun.ReadState(statePath)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						seen = append(seen, fmt.Sprintf("%s: %v", c.Method, err))
					} else {
						seen = append(seen, fmt.Sprintf("%s: %+v", c.Method, s.Resolved))
					}
				})
			}
			logger := slog.New(slog.NewTextHandler(t.Output(), nil))

			for i, s := range [][]netip.Addr{servers, again} {
				mode, err := applyDNS(t.Context(), st, statePath, d, s, logger)
				if err != nil || mode != tt.want {
					t.Fatalf("applyDNS #%d = %q, %v, want %q", i+1, mode, err, tt.want)
				}
			}
			saved, err := tun.ReadState(statePath)
			if err != nil {
				t.Fatal(err)
			}
			resolvConf, _ := os.ReadFile(d.resolvConf)
			if tt.want == "resolved" {
				if diff := cmp.Diff(lo, saved.Resolved); diff != "" || saved.ResolvConf != nil {
					t.Errorf("state names resolv.conf %+v, resolved (-want +got):\n%s", saved.ResolvConf, diff)
				}
				if string(resolvConf) != tt.resolvConf {
					t.Errorf("resolv.conf changed in resolved mode:\n%s", resolvConf)
				}
				var want []string
				for range 2 {
					for _, m := range []string{"SetLinkDNS", "SetLinkDomains", "SetLinkDefaultRoute"} {
						want = append(want, fmt.Sprintf("%s: %+v", m, lo))
					}
				}
				mu.Lock()
				defer mu.Unlock()
				if diff := cmp.Diff(want, seen); diff != "" {
					t.Errorf("calls and the state file's resolved link when they came (-want +got):\n%s", diff)
				}
				if got := fake.Calls()[3]; got.Method != "SetLinkDNS" || !cmp.Equal(got.Arg, []resolvedtest.Addr{{Family: 2, Address: again[0].AsSlice()}}) {
					t.Errorf("the second configuration's SetLinkDNS = %+v, want %s", got, again[0])
				}
				return
			}
			want := &tun.ResolvConf{Path: d.resolvConf, Backup: d.backup}
			if diff := cmp.Diff(want, saved.ResolvConf); diff != "" || saved.Resolved != nil {
				t.Errorf("state names resolved %+v, resolv.conf (-want +got):\n%s", saved.Resolved, diff)
			}
			if !strings.Contains(string(resolvConf), "nameserver 198.18.2.54\n") || strings.Contains(string(resolvConf), "198.18.2.53") {
				t.Errorf("resolv.conf after two configurations:\n%s", resolvConf)
			}
			if fake != nil {
				if calls := fake.Calls(); len(calls) != 0 {
					t.Errorf("resolved was called in resolv.conf mode: %+v", calls)
				}
			}
			saved.Tun = "" // loopback stands in for the TUN: not Undo's to delete
			if err := tun.Undo(saved); err != nil {
				t.Fatalf("Undo = %v", err)
			}
			if got, _ := os.ReadFile(d.resolvConf); string(got) != tt.resolvConf {
				t.Errorf("resolv.conf after Undo = %q, want the original %q", got, tt.resolvConf)
			}
		})
	}
}

// TestApplyDNSNoLink: resolved forced for a link that does not exist
// fails and records nothing, so the next configuration chooses again.
func TestApplyDNSNoLink(t *testing.T) {
	fake := resolvedtest.Start(t)
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state.json")
	st := &tun.State{Version: tun.StateVersion}
	d := dnsConfig{mode: dnsResolved, resolvConf: filepath.Join(dir, "resolv.conf"), backup: filepath.Join(dir, "orig"), link: "masque-nolink"}
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	if _, err := applyDNS(t.Context(), st, statePath, d, []netip.Addr{netip.MustParseAddr("198.18.2.53")}, logger); err == nil {
		t.Fatal("applyDNS for a missing link = nil error")
	}
	if st.Resolved != nil || st.ResolvConf != nil {
		t.Errorf("state after a failed applyDNS names resolved %+v, resolv.conf %+v", st.Resolved, st.ResolvConf)
	}
	if calls := fake.Calls(); len(calls) != 0 {
		t.Errorf("calls = %+v, want none", calls)
	}
}

// syncBuffer is a bytes.Buffer for a logger and a test goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestRunDNSRateLimited floods runDNS with configurations: it applies the
// first at once, then at most one per minInterval, the latest one last,
// never one that is already applied, and only the servers inside the
// tunnel's routes.
func TestRunDNSRateLimited(t *testing.T) {
	dir := t.TempDir()
	resolvConf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolvConf, []byte(ownResolvConf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The state may name only the managed resolv.conf.
	old := tun.ManagedResolvConf
	tun.ManagedResolvConf = resolvConf
	t.Cleanup(func() { tun.ManagedResolvConf = old })
	d := dnsConfig{
		mode: dnsFile, resolvConf: resolvConf, backup: filepath.Join(dir, "state", "resolv.conf.orig"),
		routes:      []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")},
		minInterval: 300 * time.Millisecond,
	}
	st := &tun.State{Version: tun.StateVersion}
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	updates := make(chan []netip.Addr, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		runDNS(ctx, st, filepath.Join(dir, "state", "state.json"), d, updates, logger)
	}()
	offer := func(s []netip.Addr) {
		select {
		case updates <- s:
		case <-updates: // the older one gives way, as up.go's onDNS does
			updates <- s
		}
	}
	start := time.Now()
	var last []netip.Addr
	for i := 0; time.Since(start) < time.Second; i++ {
		// 2001:db8:9::53 is outside the routes: never applied.
		last = []netip.Addr{netip.AddrFrom4([4]byte{198, 18, 2, byte(i % 200)}), netip.MustParseAddr("2001:db8:9::53")}
		offer(last)
		time.Sleep(time.Millisecond)
	}
	want := fmt.Sprintf("nameserver %s\n", last[0])
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, _ := os.ReadFile(resolvConf)
		if strings.HasSuffix(string(b), want) {
			if strings.Contains(string(b), "2001:db8:9::53") {
				t.Errorf("resolv.conf names a server outside the routes:\n%s", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resolv.conf never got the latest servers %v:\n%s", last, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The same servers again change nothing. (The log line follows the
	// write.)
	for !strings.Contains(logs.String(), "servers=["+last[0].String()+"]") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	n := strings.Count(logs.String(), "dns applied")
	offer(last)
	time.Sleep(400 * time.Millisecond)
	cancel()
	<-done
	if got := strings.Count(logs.String(), "dns applied"); got != n {
		t.Errorf("the same servers were applied again")
	}
	// About 1.3 s at one per 300 ms: the first at once, then at most 5.
	if n > 6 {
		t.Errorf("%d DNS changes in %v, want at most one per %v:\n%s", n, time.Since(start), d.minInterval, logs.String())
	}
}
