package e2e

import (
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// setLinkMTU sets the MTU of the client—server link, both ends.
func (tp *topo) setLinkMTU(t *testing.T, mtu int) {
	t.Helper()
	mustRun(t, "ip", "-n", tp.client, "link", "set", "c0", "mtu", strconv.Itoa(mtu))
	mustRun(t, "ip", "-n", tp.server, "link", "set", "s0", "mtu", strconv.Itoa(mtu))
}

// fragNeededRE matches ping's report of an ICMP Fragmentation Needed (or
// the path MTU the kernel learnt from one).
var fragNeededRE = regexp.MustCompile(`(?i)(frag needed and DF set \(mtu = (\d+)\)|message too long, mtu[= ]+(\d+))`)

// bigPing sends a don't-fragment ping of size bytes (IP total) to dst and
// returns the MTU that an ICMP Fragmentation Needed reported, 0 if none.
func bigPing(t *testing.T, ns, dst string, size int) (int, string) {
	t.Helper()
	r := runIn(t, ns, 20*time.Second, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", strconv.Itoa(size-28), dst)
	out := r.stdout + r.stderr
	if m := fragNeededRE.FindStringSubmatch(out); m != nil {
		n, _ := strconv.Atoi(m[2] + m[3])
		return n, out
	}
	return 0, out
}

// TestSmallPathFromStart: the client—server link has an MTU of 1280, so a
// QUIC packet is at most 1252 bytes and an inner packet at most 1213: too
// small for IPv6 (RFC 9484 §10.1). Both ends start at the size their route
// carries, the client carries IPv4 only (the kill switch keeps IPv6 in),
// its TUN MTU follows the datagram budget, and TCP works.
func TestSmallPathFromStart(t *testing.T) {
	tp := newTopo(t, false)
	tp.setLinkMTU(t, 1280)
	tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	if c.up.addr6().IsValid() {
		t.Errorf("client configured IPv6 %v on a path that cannot carry 1280-byte inner packets", c.up.addr6())
	}
	if !strings.Contains(c.stderr.String(), "IPv4 only") {
		t.Errorf("client log does not say it carries IPv4 only:\n%s", tail(c.stderr.String(), 2000))
	}
	mtu := linkMTU(t, tp.client, c.up.tun)
	t.Logf("TUN MTU %d on a 1280-byte link", mtu)
	if mtu > 1213 || mtu < 1100 {
		t.Errorf("TUN MTU %d, want the datagram budget of 1252-byte packets (≤ 1213)", mtu)
	}
	if r := runIn(t, tp.client, 20*time.Second, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", strconv.Itoa(mtu-28), targetIP4); !strings.Contains(r.stdout, " 3 received") {
		t.Errorf("full-size (%d bytes) IPv4 ping through the tunnel: want 3/3\n%s%s", mtu, r.stdout, r.stderr)
	}
	sink := startTool(t, tp.target, "tcpsink", "-listen", targetIP4+":9100", "-timeout", "60s")
	send := runIn(t, tp.client, 60*time.Second, env.nettool, "tcpsend", "-to", targetIP4+":9100", "-bytes", strconv.Itoa(20<<20))
	checkTransfer(t, "20 MB over a 1280-byte path", send, sink, 20<<20)

	// IPv6 stays in: the kill switch blocks what the tunnel does not carry.
	filter := "ip6 and not (src net fe80::/10 or dst net ff02::/16 or (icmp6 and ip6[40] >= 133 and ip6[40] <= 137))"
	dump := startCapture(t, tp.client, filter, true)
	if r := ping(t, tp.client, targetIP6, 2); r.received != 0 {
		t.Errorf("IPv6 ping answered with no IPv6 in the tunnel: %s", r.out)
	}
	time.Sleep(300 * time.Millisecond)
	dump.stop(5 * time.Second)
	if leaked := nonEmptyLines(dump.stdout.String()); len(leaked) > 0 {
		t.Errorf("%d IPv6 packets left c0:\n%s", len(leaked), tail(strings.Join(leaked, "\n"), 2000))
	}
}

// TestPathMTUShrinks: during a TCP upload and a TCP download the link's
// MTU drops from 1500 to 1280. Both kernels know (sendmsg fails with
// EMSGSIZE), quic-go does not shrink, so masque notices, closes the
// connection and reconnects with packets that fit; large inner packets get
// ICMP Fragmentation Needed and both transfers complete intact.
func TestPathMTUShrinks(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	tunMTU := linkMTU(t, tp.client, c.up.tun)

	const size = 24 << 20
	const rate = 3 << 20 // 8 s each way
	up := startTransfer(t, tp, tp.client, 9100, size, rate, false, 80*time.Second)
	down := startTransfer(t, tp, tp.client, 9101, size, rate, true, 80*time.Second)
	time.Sleep(3 * time.Second)
	tp.setLinkMTU(t, 1280)
	shrunk := time.Now()
	up.check(t, "upload across the MTU drop")
	down.check(t, "download across the MTU drop")
	t.Logf("both transfers done %v after the MTU dropped", time.Since(shrunk).Round(time.Millisecond))

	st := c.status(t)
	if st.Reconnects < 1 || st.State != "up" {
		t.Errorf("status after the MTU drop: state %q, %d reconnects; want up, ≥ 1", st.State, st.Reconnects)
	}
	log := c.stderr.String()
	if !strings.Contains(log, "path MTU shrank") {
		t.Errorf("client log does not say the path MTU shrank:\n%s", tail(log, 3000))
	}
	if m := regexp.MustCompile(`tunnel back" after=(\S+)`).FindStringSubmatch(log); m != nil {
		t.Logf("tunnel back %s after the client noticed", m[1])
	}
	// A packet as large as the TUN still lets in gets Fragmentation Needed
	// with the size the tunnel carries now.
	got, out := bigPing(t, tp.client, targetIP4, tunMTU)
	t.Logf("TUN MTU %d; a %d-byte ping now gets Fragmentation Needed with mtu %d", linkMTU(t, tp.client, c.up.tun), tunMTU, got)
	if got == 0 || got > 1252-39 {
		t.Errorf("%d-byte don't-fragment ping after the drop: want Fragmentation Needed with mtu ≤ %d\n%s", tunMTU, 1252-39, out)
	}
	if c.exited() {
		t.Fatalf("masque up exited: %s", c.exitString())
	}
}

// TestPathBlackholesLargePackets: the path starts dropping every packet
// over 1300 bytes, both ways, without an ICMP error (a broken middlebox):
// the kernels know nothing. masque notices from the losses, reconnects
// small, path MTU discovery finds the new size and both transfers
// complete intact.
func TestPathBlackholesLargePackets(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))

	const size = 16 << 20
	const rate = 2 << 20
	up := startTransfer(t, tp, tp.client, 9100, size, rate, false, 55*time.Second)
	down := startTransfer(t, tp, tp.client, 9101, size, rate, true, 55*time.Second)
	time.Sleep(2 * time.Second)
	// IP packets over 1328 bytes (UDP payloads over 1300) arriving on the
	// link. A wire drops packet by packet, but a veth hands a UDP GSO
	// batch over in one piece, which the rule would drop whole: so the
	// senders segment before the link, as on a real NIC's wire.
	for _, l := range []struct{ ns, dev string }{{tp.client, "c0"}, {tp.server, "s0"}} {
		mustRun(t, "ip", "netns", "exec", l.ns, "ethtool", "-K", l.dev, "tx-udp-segmentation", "off")
		nftInputDrop(t, l.ns, "e2e_mtu", "iifname "+l.dev+" meta length > 1328 drop")
	}
	start := time.Now()
	up.check(t, "upload across the black hole")
	down.check(t, "download across the black hole")
	t.Logf("both transfers done %v after large packets started vanishing", time.Since(start).Round(time.Millisecond))
	st := c.status(t)
	if st.Reconnects < 1 || st.State != "up" {
		t.Errorf("status: state %q, %d reconnects; want up, ≥ 1", st.State, st.Reconnects)
	}
	log := c.stderr.String()
	if m := regexp.MustCompile(`path MTU shrank[^\n]*`).FindString(log); m == "" {
		t.Errorf("client log does not say the path MTU shrank:\n%s", tail(log, 3000))
	} else {
		t.Logf("client: %s", m)
	}
	c.signal(syscall.SIGINT)
	if !c.wait(10 * time.Second) {
		t.Error("masque up did not exit on SIGINT")
	}
}
