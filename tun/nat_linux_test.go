package tun

import (
	"bytes"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/masque-vpn/masque/tun/internal/nstest"
)

func TestNAT(t *testing.T) {
	tests := []struct {
		name     string
		egress   string
		sources  []netip.Prefix
		wantRule []string // as "nft list" prints them
	}{
		{
			name:    "not the tun",
			sources: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16"), netip.MustParsePrefix("fd6d:6173:7175:6500::/64")},
			wantRule: []string{
				`ip saddr 100.64.0.0/16 oifname != "mqtest0" masquerade`,
				`ip6 saddr fd6d:6173:7175:6500::/64 oifname != "mqtest0" masquerade`,
			},
		},
		{
			name:    "egress",
			egress:  "eth9",
			sources: []netip.Prefix{netip.MustParsePrefix("100.64.0.5/32"), netip.MustParsePrefix("100.64.0.1/10")},
			wantRule: []string{
				`ip saddr 100.64.0.5 oifname "eth9" masquerade`,
				`ip saddr 100.64.0.0/10 oifname "eth9" masquerade`,
			},
		},
		{
			name:    "everything",
			egress:  "eth9",
			sources: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
			wantRule: []string{
				`meta nfproto ipv4 oifname "eth9" masquerade`,
				`meta nfproto ipv6 oifname "eth9" masquerade`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nstest.New(t)
			n, err := NewNAT("mqtest", tt.egress, "mqtest0", tt.sources)
			if err != nil {
				t.Fatalf("NewNAT() = %v", err)
			}
			defer n.Close()
			if ok, err := TableExists("mqtest"); err != nil || !ok {
				t.Fatalf("TableExists(mqtest) = %v, %v, want true", ok, err)
			}
			if got := natRules(t, "mqtest"); got != len(tt.sources) {
				t.Errorf("table has %d rules, want %d", got, len(tt.sources))
			}
			if got, ok := nftList(t, "mqtest"); ok {
				want := "table inet mqtest {\nchain postrouting {\n" +
					"type nat hook postrouting priority srcnat; policy accept;\n" +
					strings.Join(tt.wantRule, "\n") + "\n}\n}"
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("nft list table inet mqtest (-want +got):\n%s", diff)
				}
			}
			if err := n.Close(); err != nil {
				t.Fatalf("Close() = %v", err)
			}
			if err := n.Close(); err != nil {
				t.Errorf("second Close() = %v, want nil", err)
			}
			if ok, err := TableExists("mqtest"); err != nil || ok {
				t.Errorf("TableExists(mqtest) after Close = %v, %v, want false", ok, err)
			}
		})
	}
}

func TestNATReplacesLeftover(t *testing.T) {
	nstest.New(t)
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Name: "mqtest", Family: nftables.TableFamilyINet})
	c.AddChain(&nftables.Chain{Name: "leftover", Table: tbl})
	c.AddChain(&nftables.Chain{Name: natChain, Table: tbl})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	n, err := NewNAT("mqtest", "", "mqtest0", []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")})
	if err != nil {
		t.Fatalf("NewNAT() over a leftover table = %v", err)
	}
	defer n.Close()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ch := range chains {
		names = append(names, ch.Table.Name+"/"+ch.Name)
	}
	if diff := cmp.Diff([]string{"mqtest/" + natChain}, names); diff != "" {
		t.Errorf("chains (-want +got):\n%s", diff)
	}
	if got := natRules(t, "mqtest"); got != 1 {
		t.Errorf("table has %d rules, want 1", got)
	}
}

func TestDeleteTable(t *testing.T) {
	nstest.New(t)
	if err := DeleteTable("mqtest"); err != nil {
		t.Errorf("DeleteTable(absent) = %v, want nil", err)
	}
	if ok, err := TableExists("mqtest"); err != nil || ok {
		t.Errorf("TableExists(absent) = %v, %v, want false, nil", ok, err)
	}
	n, err := NewNAT("mqtest", "eth9", "", []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := DeleteTable("mqtest"); err != nil {
		t.Errorf("DeleteTable(present) = %v, want nil", err)
	}
	if ok, err := TableExists("mqtest"); err != nil || ok {
		t.Errorf("TableExists after DeleteTable = %v, %v, want false, nil", ok, err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("Close() after DeleteTable = %v, want nil", err)
	}
}

// TestNATMasquerades forwards a packet from a client address in the
// server's TUN to an uplink (a second TUN) and checks that it leaves with
// the uplink's address as its source.
func TestNATMasquerades(t *testing.T) {
	nstest.New(t)
	srv, err := Create(Config{Name: "mqtest0", Addrs: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/16")}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	uplink := createUplink(t) // 198.18.200.1/24, default via 198.18.200.254
	pkts := readPackets(t, uplink)
	if _, err := SetSysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	n, err := NewNAT("mqtest", "", srv.Name(), []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	client := netip.MustParseAddrPort("100.64.0.2:4000")
	remote := netip.MustParseAddrPort("198.19.1.1:53")
	payload := []byte("masque nat")
	buf := appendUDP(make([]byte, Headroom, Headroom+64), client, remote, payload)
	if _, err := srv.Write([][]byte{buf}, Headroom); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	src, dst, got, err := parseUDP(waitUDP(t, pkts, remote))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddr("198.18.200.1"); src.Addr() != want || dst != remote || !bytes.Equal(got, payload) {
		t.Errorf("uplink got %v -> %v %q, want %v:* -> %v %q", src, dst, got, want, remote, payload)
	}
}

// natRules counts the rules in the table's postrouting chain.
func natRules(t *testing.T, table string) int {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := c.GetRules(&nftables.Table{Name: table, Family: nftables.TableFamilyINet}, &nftables.Chain{Name: natChain})
	if err != nil {
		t.Fatalf("GetRules(inet %s %s) = %v", table, natChain, err)
	}
	return len(rules)
}

// nftList returns "nft list table inet <table>" with each line trimmed,
// or false when nft is not installed. nft runs in the test's namespace:
// the child inherits the namespace of the locked thread that forks it.
func nftList(t *testing.T, table string) (string, bool) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Logf("nft not installed: not checking the rules' text")
		return "", false
	}
	out, err := exec.Command("nft", "list", "table", "inet", table).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table inet %s: %v: %s", table, err, out)
	}
	var lines []string
	for l := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n"), true
}
