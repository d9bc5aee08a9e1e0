package tun

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var stateCmpOpts = cmp.Options{cmpPrefixes, cmpopts.EquateEmpty()}

var cmpPrefixes = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func testState() *State {
	return &State{
		Version: StateVersion,
		PID:     4242,
		Tun:     "masque0",
		Routing: &Routing{
			Link:     "masque0",
			Routes:   []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
			Excludes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
		},
		NFTables: []string{DefaultKillSwitchTable},
		Sysctls:  map[string]string{"net/ipv4/ip_forward": "0", "net/ipv6/conf/masque0/accept_ra": "2"},
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "masque")
	path := filepath.Join(dir, "state.json")
	want := testState()
	if err := WriteState(path, want); err != nil {
		t.Fatalf("WriteState() = %v", err)
	}
	got, err := ReadState(path)
	if err != nil {
		t.Fatalf("ReadState() = %v", err)
	}
	if diff := cmp.Diff(want, got, stateCmpOpts); diff != "" {
		t.Errorf("ReadState(WriteState(s)) (-want +got):\n%s", diff)
	}
	for _, c := range []struct {
		path string
		want fs.FileMode
	}{{path, 0o600}, {dir, 0o700 | fs.ModeDir}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.want {
			t.Errorf("mode of %s = %v, want %v", c.path, fi.Mode(), c.want)
		}
	}

	// Overwriting leaves no temporary files behind.
	want.Tun = ""
	delete(want.Sysctls, "net/ipv6/conf/masque0/accept_ra") // a TUN's sysctl needs the TUN
	if err := WriteState(path, want); err != nil {
		t.Fatalf("second WriteState() = %v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("state directory holds %v, want only state.json", entries)
	}
	if got, err := ReadState(path); err != nil || got.Tun != "" {
		t.Errorf("ReadState() after overwrite = %+v, %v", got, err)
	}

	if err := RemoveState(path); err != nil {
		t.Errorf("RemoveState() = %v", err)
	}
	if err := RemoveState(path); err != nil {
		t.Errorf("second RemoveState() = %v, want nil", err)
	}
	if _, err := ReadState(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadState(removed) = %v, want fs.ErrNotExist", err)
	}
}

func TestWriteStateDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := &State{Tun: "masque0"}
	if err := WriteState(path, s); err != nil {
		t.Fatal(err)
	}
	if s.Version != 0 || s.PID != 0 {
		t.Errorf("WriteState modified its argument: %+v", s)
	}
	got, err := ReadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != StateVersion || got.PID != os.Getpid() {
		t.Errorf("ReadState() = version %d pid %d, want %d %d", got.Version, got.PID, StateVersion, os.Getpid())
	}
}

func TestWriteStateInvalid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	err := WriteState(path, &State{Routing: &Routing{Table: 254}})
	if err == nil || !strings.Contains(err.Error(), "write state: routing: table: 254 is a reserved table") {
		t.Errorf("WriteState(main table) = %v, want reserved table error", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("invalid state was written: %v", err)
	}
}

func TestParseState(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    *State
		wantErr string // substring; "" means valid
	}{
		{name: "minimal", in: `{"version":1,"pid":7}`, want: &State{Version: 1, PID: 7}},
		{name: "full", in: mustJSON(t, testState()), want: testState()},
		{name: "routing defaults", in: `{"version":1,"pid":7,"routing":{}}`, want: &State{Version: 1, PID: 7, Routing: &Routing{}}},
		{name: "empty", in: ``, wantErr: "unexpected EOF"},
		{name: "truncated", in: `{"version":1,"pid":`, wantErr: "unexpected EOF"},
		{name: "not json", in: "\x00\x01garbage", wantErr: "invalid character"},
		{name: "array", in: `[]`, wantErr: "cannot unmarshal array"},
		{name: "null", in: `null`, wantErr: "version: 0 unsupported"},
		{name: "unknown field", in: `{"version":1,"pid":7,"extra":1}`, wantErr: `unknown field "extra"`},
		{name: "trailing data", in: `{"version":1,"pid":7} {}`, wantErr: "trailing data"},
		{name: "future version", in: `{"version":2,"pid":7}`, wantErr: "version: 2 unsupported, want 1"},
		{name: "negative pid", in: `{"version":1,"pid":-1}`, wantErr: "pid: -1 negative"},
		{name: "bad tun", in: `{"version":1,"pid":7,"tun":"a/b"}`, wantErr: "tun: invalid interface name"},
		{name: "main table", in: `{"version":1,"pid":7,"routing":{"table":254}}`, wantErr: "routing: table: 254 is a reserved table"},
		{name: "bad prefix", in: `{"version":1,"pid":7,"routing":{"link":"x","routes":["nope"]}}`, wantErr: `netip.ParsePrefix("nope")`},
		{name: "empty nft table", in: `{"version":1,"pid":7,"nft_tables":[""]}`, wantErr: "nft_tables[0]: empty table name"},
		{name: "sysctl escape", in: `{"version":1,"pid":7,"sysctls":{"../../etc/passwd":"x"}}`, wantErr: `sysctls: invalid sysctl key "../../etc/passwd"`},
		{name: "sysctl absolute", in: `{"version":1,"pid":7,"sysctls":{"/etc/passwd":"x"}}`, wantErr: `sysctls: invalid sysctl key "/etc/passwd"`},
		{name: "sysctl unclean", in: `{"version":1,"pid":7,"sysctls":{"net/../../x":"x"}}`, wantErr: "invalid sysctl key"},
		{name: "resolved", in: `{"version":1,"pid":7,"tun":"masque0","resolved":{"link":"masque0","ifindex":12}}`,
			want: &State{Version: 1, PID: 7, Tun: "masque0", Resolved: &ResolvedLink{Link: "masque0", Ifindex: 12}}},
		{name: "resolved another link", in: `{"version":1,"pid":7,"tun":"masque0","resolved":{"link":"eth0","ifindex":2}}`,
			wantErr: `resolved: link "eth0" is not the state's tun "masque0"`},
		{name: "resolved without index", in: `{"version":1,"pid":7,"resolved":{"link":"masque0"}}`, wantErr: "resolved: ifindex 0 out of range"},
		{name: "resolved bad link", in: `{"version":1,"pid":7,"resolved":{"link":"../x","ifindex":3}}`, wantErr: "resolved: link: invalid interface name"},
		// Only masque's own kinds of change: a planted state that names
		// anything else is corrupt, and Undo touches nothing of it.
		{name: "core_pattern", in: `{"version":1,"pid":7,"sysctls":{"kernel/core_pattern":"|/tmp/x"}}`,
			wantErr: `sysctls: "kernel/core_pattern" is not a sysctl masque sets`},
		{name: "sysctl value not decimal", in: `{"version":1,"pid":7,"sysctls":{"net/ipv4/ip_forward":"1 2"}}`,
			wantErr: `sysctls[net/ipv4/ip_forward]: value "1 2" is not a decimal integer`},
		{name: "sysctl value empty", in: `{"version":1,"pid":7,"sysctls":{"net/ipv4/ip_forward":""}}`, wantErr: "not a decimal integer"},
		{name: "sysctl value NUL", in: `{"version":1,"pid":7,"sysctls":{"net/ipv4/ip_forward":"1\u0000"}}`, wantErr: "not a decimal integer"},
		{name: "forwarding sysctls", in: `{"version":1,"pid":7,"sysctls":{"net/ipv4/ip_forward":"0","net/ipv6/conf/all/forwarding":"1"}}`,
			want: &State{Version: 1, PID: 7, Sysctls: map[string]string{"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "1"}}},
		{name: "the tun's sysctls", in: `{"version":1,"pid":7,"tun":"mq.0","sysctls":{"net/ipv6/conf/mq.0/accept_ra":"1","net/ipv4/conf/mq.0/rp_filter":"-1"}}`,
			want: &State{Version: 1, PID: 7, Tun: "mq.0", Sysctls: map[string]string{"net/ipv6/conf/mq.0/accept_ra": "1", "net/ipv4/conf/mq.0/rp_filter": "-1"}}},
		{name: "another link's sysctl", in: `{"version":1,"pid":7,"tun":"masque0","sysctls":{"net/ipv6/conf/eth0/accept_ra":"1"}}`,
			wantErr: `"net/ipv6/conf/eth0/accept_ra" is not a sysctl masque sets`},
		{name: "tun sysctl without a tun", in: `{"version":1,"pid":7,"sysctls":{"net/ipv6/conf/masque0/accept_ra":"1"}}`,
			wantErr: "is not a sysctl masque sets"},
		{name: "all's sysctl", in: `{"version":1,"pid":7,"tun":"all","sysctls":{"net/ipv6/conf/all/disable_ipv6":"1"}}`,
			wantErr: `"net/ipv6/conf/all/disable_ipv6" is not a sysctl masque sets`},
		{name: "default's sysctl", in: `{"version":1,"pid":7,"tun":"masque0","sysctls":{"net/ipv6/conf/default/disable_ipv6":"1"}}`,
			wantErr: "is not a sysctl masque sets"},
		{name: "tun sysctl not on the list", in: `{"version":1,"pid":7,"tun":"masque0","sysctls":{"net/ipv4/conf/masque0/arp_announce":"1"}}`,
			wantErr: "is not a sysctl masque sets"},
		{name: "tun sysctl too deep", in: `{"version":1,"pid":7,"tun":"masque0","sysctls":{"net/ipv4/conf/x/masque0/forwarding":"1"}}`,
			wantErr: "is not a sysctl masque sets"},
		{name: "foreign nft table", in: `{"version":1,"pid":7,"nft_tables":["firewalld"]}`,
			wantErr: `nft_tables[0]: "firewalld" is not one of masque's tables (masque_killswitch, masque_forward, masqued)`},
		{name: "masque's nft tables", in: `{"version":1,"pid":7,"nft_tables":["masque_killswitch","masque_forward","masqued"]}`,
			want: &State{Version: 1, PID: 7, NFTables: []string{DefaultKillSwitchTable, DefaultGatewayTable, DefaultNATTable}}},
		{name: "foreign routing table", in: `{"version":1,"pid":7,"routing":{"table":51820}}`,
			wantErr: "routing: table: 51820 is not masque's table 19793 (slot 0)"},
		{name: "foreign fwmark", in: `{"version":1,"pid":7,"routing":{"fwmark":51820}}`,
			wantErr: "routing: fwmark: 0xca6c is not masque's mark 0x4d51"},
		{name: "foreign rule priority", in: `{"version":1,"pid":7,"routing":{"rule_priority":100}}`,
			wantErr: "routing: rule_priority: 100 is not masque's 5200"},
		{name: "masque's routing spelt out", in: `{"version":1,"pid":7,"routing":{"table":19793,"fwmark":19793,"rule_priority":5200}}`,
			want: &State{Version: 1, PID: 7, Routing: &Routing{Table: DefaultTable, FwMark: DefaultFwMark, RulePriority: DefaultRulePriority}}},
		// Instances: each slot has names of its own, and a state names
		// one slot's only, the one it says it holds.
		{name: "slot 3's names", in: `{"version":1,"pid":7,"slot":3,"routing":{"table":19796,"fwmark":19796,"rule_priority":5206},"nft_tables":["masque_killswitch_3","masqued"]}`,
			want: &State{Version: 1, PID: 7, Slot: 3, Routing: &Routing{Table: DefaultTable + 3, FwMark: DefaultFwMark + 3, RulePriority: DefaultRulePriority + 6},
				NFTables: []string{"masque_killswitch_3", DefaultNATTable}}},
		{name: "last slot's names", in: `{"version":1,"pid":7,"slot":15,"routing":{"table":19808,"fwmark":19808,"rule_priority":5230},"nft_tables":["masque_killswitch_15"]}`,
			want: &State{Version: 1, PID: 7, Slot: 15, Routing: &Routing{Table: 19808, FwMark: 19808, RulePriority: 5230}, NFTables: []string{"masque_killswitch_15"}}},
		{name: "slot 3's routing defaults", in: `{"version":1,"pid":7,"slot":3,"routing":{}}`,
			wantErr: "routing: table: 19793 is not masque's table 19796 (slot 3); it is slot 0's"},
		{name: "mixed slots", in: `{"version":1,"pid":7,"slot":3,"routing":{"table":19796,"fwmark":19795,"rule_priority":5204}}`,
			wantErr: "routing: fwmark: 0x4d53 is not masque's mark 0x4d54 (slot 3); it is slot 2's\nrouting: rule_priority: 5204 is not masque's 5206 (slot 3); it is slot 2's"},
		{name: "another slot's routing without a slot", in: `{"version":1,"pid":7,"routing":{"table":19796,"fwmark":19796,"rule_priority":5206}}`,
			wantErr: "routing: table: 19796 is not masque's table 19793 (slot 0); it is slot 3's"},
		{name: "odd rule priority", in: `{"version":1,"pid":7,"slot":1,"routing":{"table":19794,"fwmark":19794,"rule_priority":5201}}`,
			wantErr: "routing: rule_priority: 5201 is not masque's 5202 (slot 1)"},
		{name: "another slot's kill switch", in: `{"version":1,"pid":7,"slot":3,"nft_tables":["masque_killswitch_2"]}`,
			wantErr: `nft_tables[0]: "masque_killswitch_2" is not one of masque's tables (masque_killswitch_3, masque_forward_3, masqued); it is slot 2's`},
		{name: "slot 0's kill switch in slot 3", in: `{"version":1,"pid":7,"slot":3,"nft_tables":["masque_killswitch"]}`,
			wantErr: "it is slot 0's"},
		{name: "kill switch spelt with a zero", in: `{"version":1,"pid":7,"slot":3,"nft_tables":["masque_killswitch_03"]}`,
			wantErr: `"masque_killswitch_03" is not one of masque's tables (masque_killswitch_3, masque_forward_3, masqued)`},
		{name: "kill switch of slot 16", in: `{"version":1,"pid":7,"nft_tables":["masque_killswitch_16"]}`,
			wantErr: `"masque_killswitch_16" is not one of masque's tables`},
		{name: "slot out of range", in: `{"version":1,"pid":7,"slot":16}`, wantErr: "slot: 16 out of range 0..15"},
		{name: "negative slot", in: `{"version":1,"pid":7,"slot":-1,"routing":{"table":19792}}`,
			wantErr: "slot: -1 out of range 0..15\nrouting: table: 19792 is not masque's table 19793 (slot 0)"},
		{name: "claim", in: `{"version":1,"pid":7,"slot":3,"claim":"/run/masque/instances/4026531840.3.json"}`,
			want: &State{Version: 1, PID: 7, Slot: 3, Claim: "/run/masque/instances/4026531840.3.json"}},
		{name: "claim of another slot", in: `{"version":1,"pid":7,"slot":3,"claim":"/run/masque/instances/4026531840.2.json"}`,
			wantErr: "claim: \"/run/masque/instances/4026531840.2.json\" is the claim of slot 2, not of the state's slot 3"},
		{name: "claim elsewhere", in: `{"version":1,"pid":7,"claim":"/etc/instances/passwd"}`,
			wantErr: "claim: \"/etc/instances/passwd\" is not named <netns>.<slot>.json"},
		{name: "claim outside a registry", in: `{"version":1,"pid":7,"claim":"/etc/4026531840.0.json"}`,
			wantErr: "is not in a directory named instances"},
		{name: "claim unclean", in: `{"version":1,"pid":7,"claim":"/run/masque/instances/../instances/1.0.json"}`,
			wantErr: "claim: \"/run/masque/instances/../instances/1.0.json\" is not a clean absolute path"},
		{name: "resolv_conf", in: `{"version":1,"pid":7,"resolv_conf":{"path":"/etc/resolv.conf","backup":"/run/masque/resolv.conf.orig"}}`,
			want: &State{Version: 1, PID: 7, ResolvConf: &ResolvConf{Path: "/etc/resolv.conf", Backup: "/run/masque/resolv.conf.orig"}}},
		{name: "resolv_conf elsewhere", in: `{"version":1,"pid":7,"resolv_conf":{"path":"/etc/passwd","backup":"/run/masque/resolv.conf.orig"}}`,
			wantErr: `resolv_conf: path "/etc/passwd" is not /etc/resolv.conf`},
		{name: "resolv_conf unclean", in: `{"version":1,"pid":7,"resolv_conf":{"path":"/etc/../etc/resolv.conf","backup":"/run/masque/resolv.conf.orig"}}`,
			wantErr: "is not /etc/resolv.conf"},
		{name: "resolv_conf backup misnamed", in: `{"version":1,"pid":7,"resolv_conf":{"path":"/etc/resolv.conf","backup":"/root/.ssh/id_ed25519"}}`,
			wantErr: `resolv_conf: backup "/root/.ssh/id_ed25519" is not a clean path named resolv.conf.orig`},
		{name: "resolv_conf backup unclean", in: `{"version":1,"pid":7,"resolv_conf":{"path":"/etc/resolv.conf","backup":"/run/masque/../x/resolv.conf.orig"}}`,
			wantErr: "is not a clean path named resolv.conf.orig"},
		{name: "all problems at once", in: `{"version":3,"pid":-2,"tun":"."}`, wantErr: "version: 3 unsupported, want 1\npid: -2 negative\ntun: invalid interface name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseState([]byte(tt.in))
			if tt.wantErr != "" {
				if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseState(%q) = %v, want ErrCorruptState containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseState(%q) = %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got, stateCmpOpts); diff != "" {
				t.Errorf("ParseState(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestReadStateCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	if err := os.WriteFile(path, []byte(`{"version":1,`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ReadState(path)
	if !errors.Is(err, ErrCorruptState) || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadState(corrupt) = %v, want ErrCorruptState", err)
	}
	if want := "read state " + path + ": corrupt state: "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("ReadState(corrupt) = %q, want prefix %q", err, want)
	}
}

// TestReadStateBackupElsewhere checks that a state naming a resolv.conf
// backup outside its own directory is corrupt: Undo would copy a file of
// the planter's choosing to /etc/resolv.conf.
func TestReadStateBackupElsewhere(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	elsewhere := filepath.Join(t.TempDir(), ResolvConfBackup)
	in := `{"version":1,"pid":7,"resolv_conf":{"path":"/etc/resolv.conf","backup":"` + elsewhere + `"}}`
	if err := os.WriteFile(path, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ReadState(path)
	if want := "is not in the state directory " + dir; !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), want) {
		t.Errorf("ReadState(backup elsewhere) = %v, want ErrCorruptState containing %q", err, want)
	}
	rc := &ResolvConf{Path: ManagedResolvConf, Backup: elsewhere}
	if err := WriteState(path, &State{ResolvConf: rc}); err == nil || !strings.Contains(err.Error(), "is not in the state directory") {
		t.Errorf("WriteState(backup elsewhere) = %v, want refusal", err)
	}
	rc.Backup = filepath.Join(dir, ResolvConfBackup)
	if err := WriteState(path, &State{ResolvConf: rc}); err != nil {
		t.Errorf("WriteState(backup in the state directory) = %v", err)
	}
	if _, err := ReadState(path); err != nil {
		t.Errorf("ReadState(backup in the state directory) = %v", err)
	}
}

// TestUndoRefusesForeign checks that Undo of a state that fails Validate
// changes nothing at all, the valid parts included.
func TestUndoRefusesForeign(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(dir, ResolvConfBackup)
	if err := os.WriteFile(backup, []byte("planted\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile("/proc/sys/kernel/core_pattern")
	s := &State{
		Version:    StateVersion,
		Sysctls:    map[string]string{"kernel/core_pattern": "|/bin/false"},
		ResolvConf: &ResolvConf{Path: victim, Backup: backup},
	}
	err := Undo(s)
	if !errors.Is(err, ErrCorruptState) {
		t.Fatalf("Undo(foreign) = %v, want ErrCorruptState", err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "keep\n" {
		t.Errorf("victim = %q after a refused Undo", got)
	}
	if _, err := os.Stat(backup); err != nil {
		t.Errorf("backup gone after a refused Undo: %v", err)
	}
	if after, _ := os.ReadFile("/proc/sys/kernel/core_pattern"); string(after) != string(before) {
		t.Errorf("core_pattern = %q after a refused Undo, was %q", after, before)
	}
}

func TestSysctlKey(t *testing.T) {
	tests := []struct {
		key string
		ok  bool
	}{
		{"net/ipv4/ip_forward", true},
		{"net/ipv6/conf/eth0.100/forwarding", true},
		{"", false},
		{".", false},
		{"..", false},
		{"../x", false},
		{"net/../../x", false},
		{"/net/ipv4/ip_forward", false},
		{"net//ipv4", false},
		{"net/ipv4/", false},
		{"net/\x00", false},
	}
	for _, tt := range tests {
		if err := validateSysctlKey(tt.key); (err == nil) != tt.ok {
			t.Errorf("validateSysctlKey(%q) = %v, want ok %v", tt.key, err, tt.ok)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
