package tun

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzReadState checks that ParseState either rejects its input or
// returns a State that marshals to JSON which parses back to an equal
// State, and that names only what masque itself changes (checkOwnOnly):
// a planted state cannot steer Undo anywhere else.
func FuzzReadState(f *testing.F) {
	f.Add([]byte(`{"version":1,"pid":7}`))
	f.Add([]byte(`{"version":1,"pid":7,"tun":"masque0","routing":{"link":"masque0","table":100,"fwmark":4660,` +
		`"rule_priority":1000,"routes":["0.0.0.0/0","::/0"],"excludes":["192.0.2.1/24"]},` +
		`"nft_tables":["masque"],"sysctls":{"net/ipv4/ip_forward":"0"}}`))
	f.Add([]byte(`{"version":1,"pid":7,"routing":{},"sysctls":{},"nft_tables":[]}`))
	f.Add([]byte(`{"version":1,"pid":7,"routing":{"table":254}}`))
	f.Add([]byte(`{"version":1,"pid":7,"sysctls":{"../x":"1"}}`))
	f.Add([]byte(`{"version":1,"pid":7,"tun":"masque0","resolved":{"link":"masque0","ifindex":12},` +
		`"resolv_conf":{"path":"/etc/resolv.conf","backup":"/run/masque/resolv.conf.orig"}}`))
	f.Add([]byte(`{"version":1,"pid":7,"tun":"masque0","sysctls":{"net/ipv6/conf/masque0/accept_ra":"0",` +
		`"net/ipv4/conf/masque0/rp_filter":"1","net/ipv6/conf/all/forwarding":"1"},"nft_tables":["masque_killswitch","masque_forward","masqued"]}`))
	f.Add([]byte(`{"version":1,"pid":7,"sysctls":{"kernel/core_pattern":"|/tmp/x"}}`))
	f.Add([]byte(`{"version":1,"pid":7,"nft_tables":["firewalld"],"routing":{"table":51820,"fwmark":51820,"rule_priority":100}}`))
	f.Add([]byte(`{"version":1,"pid":7,"resolv_conf":{"path":"/etc/passwd","backup":"/tmp/evil/resolv.conf.orig"}}`))
	f.Add([]byte(`{"version":1,"pid":7,"slot":3,"routing":{"table":19796,"fwmark":19796,"rule_priority":5206},"nft_tables":["masque_killswitch_3","masqued"]}`))
	f.Add([]byte(`{"version":1,"pid":7,"slot":3,"routing":{"table":19796,"fwmark":19795,"rule_priority":5206},"nft_tables":["masque_killswitch_2"]}`))
	f.Add([]byte(`{"version":1,"pid":7,"slot":16,"nft_tables":["masque_killswitch_16"]}`))
	f.Add([]byte(`{"version":1,"pid":7,"slot":3,"claim":"/run/masque/instances/4026531840.3.json"}`))
	f.Add([]byte(`{"version":1,"pid":7,"slot":3,"claim":"/run/masque/instances/../../../etc/shadow"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseState(b)
		if err != nil {
			if s != nil {
				t.Fatalf("ParseState(%q) = %+v, %v: state with error", b, s, err)
			}
			return
		}
		checkOwnOnly(t, b, s)
		b2, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("json.Marshal(%+v) = %v", s, err)
		}
		s2, err := ParseState(b2)
		if err != nil {
			t.Fatalf("ParseState(%q) = %v; it came from ParseState(%q)", b2, err, b)
		}
		if diff := cmp.Diff(s, s2, stateCmpOpts); diff != "" {
			t.Fatalf("state changed in a JSON round trip of %q (-first +second):\n%s", b, diff)
		}
	})
}

// ownSysctlKey is a TUN's sysctl as masque may set it; the TUN's name is
// checked apart.
var ownSysctlKey = regexp.MustCompile(`^net/ipv[46]/conf/([^/]+)/[a-z_]+$`)

// claimPathRE is a claim file's path: in a directory named instances.
var claimPathRE = regexp.MustCompile(`^/([^/\x00]+/)*instances/[1-9][0-9]*\.(0|[1-9]|1[0-5])\.json$`)

var decimalValue = regexp.MustCompile(`^-?[0-9]{1,10}$`)

// checkOwnOnly fails t unless s, parsed from b, names only masque's own
// table, mark, rule priorities, nftables tables and claim, all of s's
// slot, and its own sysctls and resolv.conf. It restates the allowlist rather than calling it.
func checkOwnOnly(t *testing.T, b []byte, s *State) {
	t.Helper()
	slot := int(s.Slot)
	if slot < 0 || slot > 15 {
		t.Errorf("ParseState(%q) accepted slot %d", b, slot)
	}
	if r := s.Routing; r != nil {
		table, mark, prio := r.Table, r.FwMark, r.RulePriority
		if table == 0 {
			table = 0x4d51
		}
		if mark == 0 {
			mark = 0x4d51
		}
		if prio == 0 {
			prio = 5200
		}
		if table != 0x4d51+slot || mark != 0x4d51+uint32(slot) || prio != 5200+2*slot {
			t.Errorf("ParseState(%q) accepted routing table %d, mark %#x, priority %d for slot %d", b, r.Table, r.FwMark, r.RulePriority, slot)
		}
	}
	killSwitch, gateway := "masque_killswitch", "masque_forward"
	if slot != 0 {
		killSwitch = fmt.Sprintf("masque_killswitch_%d", slot)
		gateway = fmt.Sprintf("masque_forward_%d", slot)
	}
	for _, tb := range s.NFTables {
		if tb != killSwitch && tb != gateway && tb != "masqued" {
			t.Errorf("ParseState(%q) accepted nft table %q for slot %d", b, tb, slot)
		}
	}
	for k, v := range s.Sysctls {
		own := k == "net/ipv4/ip_forward" || k == "net/ipv6/conf/all/forwarding"
		if m := ownSysctlKey.FindStringSubmatch(k); m != nil && m[1] == s.Tun && s.Tun != "all" && s.Tun != "default" {
			own = true
		}
		if !own || !decimalValue.MatchString(v) {
			t.Errorf("ParseState(%q) accepted sysctl %q = %q (tun %q)", b, k, v, s.Tun)
		}
	}
	if c := s.Claim; c != "" {
		if !claimPathRE.MatchString(c) || strings.Contains(c, "/../") || strings.Contains(c, "/./") || strings.Contains(c, "//") ||
			!strings.HasSuffix(c, fmt.Sprintf(".%d.json", slot)) {
			t.Errorf("ParseState(%q) accepted claim %q for slot %d", b, c, slot)
		}
	}
	if rc := s.ResolvConf; rc != nil {
		if rc.Path != "/etc/resolv.conf" || !strings.HasPrefix(rc.Backup, "/") ||
			!strings.HasSuffix(rc.Backup, "/resolv.conf.orig") || strings.Contains(rc.Backup, "/../") || strings.Contains(rc.Backup, "//") {
			t.Errorf("ParseState(%q) accepted resolv.conf %q with backup %q", b, rc.Path, rc.Backup)
		}
	}
}
