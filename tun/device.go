package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Headroom is the number of bytes that callers must leave free in front of
// every packet passed to [Device.Read] and [Device.Write] (the offset
// argument must be at least Headroom). With virtio-net-hdr offloads active
// the device prepends a 10-byte struct virtio_net_hdr to each packet it
// writes to the kernel, in place, in front of the packet; 16 keeps the
// packet itself 8-byte aligned for the checksum code and leaves room
// should the header grow (for example to the 12-byte
// virtio_net_hdr_mrg_rxbuf).
const Headroom = 16

// DefaultMTU is the MTU used when [Config.MTU] is zero: the minimum IPv6
// link MTU, which RFC 9484 §10.1 requires a CONNECT-IP tunnel that carries
// IPv6 to guarantee.
const DefaultMTU = 1280

// MinMTU and MaxMTU bound [Config.MTU]; a link with an IPv6 address needs
// at least MinIPv6MTU (the kernel turns IPv6 off on a smaller one).
const (
	MinMTU     = 576
	MinIPv6MTU = 1280
	MaxMTU     = 65535
)

// closeWait bounds how long Close waits for wireguard-go's listener
// goroutines.
const closeWait = 5 * time.Second

// maxNameLen is IFNAMSIZ minus the terminating NUL.
const maxNameLen = 15

// Config describes a TUN device to create.
type Config struct {
	// Name is the interface name, for example "masque0". If empty the
	// kernel picks one ("tun0", ...); [Device.Name] returns it.
	Name string
	// MTU is the link MTU, MinMTU..MaxMTU; zero means DefaultMTU.
	MTU int
	// Addrs are the addresses to put on the link with their prefix length,
	// for a client for example 100.64.0.2/32 and
	// fd6d:6173:7175:6500::2/128; for a server the gateway address with the
	// length of the address pool, for example 100.64.0.1/16, so that the
	// kernel routes the whole pool into the device.
	Addrs []netip.Prefix
	// EndHost makes the link an end host's, not a router's or a LAN's:
	// the client's TUN, whose far side (the server) is trusted with
	// packets but not with the host. Create then sets the link's
	// sysctls before it goes up so that it takes no router
	// advertisements, autoconfiguration or redirects, gets no
	// link-local address, filters received sources strictly by reverse
	// path and forwards nothing that arrives on it (see
	// [Device.Sysctls]). A server's TUN, which forwards, leaves it
	// false.
	EndHost bool
	// AllowForward, with EndHost, sets the link's IPv4 forwarding to 1
	// rather than 0: the kernel forwards a packet only if the link it
	// arrived on forwards, and the replies to what hosts behind this one
	// send through the tunnel (masqueraded, see [Gateway]) arrive on the
	// TUN for the TUN's address and are forwarded once de-NATed. Whatever
	// else would be forwarded from the link is then for a forward chain
	// to drop ([NewGateway], [KillSwitchConfig.AllowForward]).
	AllowForward bool
}

// Validate reports every problem in c at once, joined with [errors.Join];
// each names the offending field.
func (c *Config) Validate() error {
	var errs []error
	if err := validateLinkName(c.Name, true); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
		errs = append(errs, fmt.Errorf("mtu: %d out of range %d..%d", c.MTU, MinMTU, MaxMTU))
	} else if c.MTU != 0 && c.MTU < MinIPv6MTU && slices.ContainsFunc(c.Addrs, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		errs = append(errs, fmt.Errorf("mtu: %d below %d, which IPv6 needs", c.MTU, MinIPv6MTU))
	}
	seen := make(map[netip.Addr]bool, len(c.Addrs))
	for i, p := range c.Addrs {
		switch {
		case !p.IsValid():
			errs = append(errs, fmt.Errorf("addrs[%d]: invalid prefix", i))
		case p.Addr().Is4In6():
			errs = append(errs, fmt.Errorf("addrs[%d]: %v: IPv4-mapped IPv6 address", i, p))
		case p.Addr().Zone() != "":
			errs = append(errs, fmt.Errorf("addrs[%d]: %v: address has a zone", i, p))
		case seen[p.Addr()]:
			errs = append(errs, fmt.Errorf("addrs[%d]: duplicate address %v", i, p.Addr()))
		}
		seen[p.Addr()] = true
	}
	if c.AllowForward && !c.EndHost {
		errs = append(errs, errors.New("allow_forward: only with end_host (a link that is not an end host's keeps its sysctls)"))
	}
	return errors.Join(errs...)
}

func (c *Config) mtu() int {
	if c.MTU == 0 {
		return DefaultMTU
	}
	return c.MTU
}

// validateLinkName checks what the kernel's dev_valid_name checks.
func validateLinkName(name string, emptyOK bool) error {
	switch {
	case name == "":
		if emptyOK {
			return nil
		}
		return errors.New("empty interface name")
	case len(name) > maxNameLen:
		return fmt.Errorf("interface name %q longer than %d bytes", name, maxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("invalid interface name %q", name)
	}
	for _, c := range []byte(name) {
		if c == '/' || c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("invalid interface name %q", name)
		}
	}
	return nil
}

// Device is a kernel TUN device created with
// [golang.zx2c4.com/wireguard/tun.CreateTUN], which enables virtio-net-hdr
// offloads when the kernel supports them: TSO (and USO on Linux 6.2+) on
// Read, so that one Read may return up to BatchSize() segments of one large
// packet, and GRO on Write, so that Write coalesces a batch before handing
// it to the kernel.
//
// Device embeds the wireguard-go device, and Read(bufs, sizes, offset),
// Write(bufs, offset), BatchSize() and File() keep the wireguard-go
// contract (WG tun/tun.go):
//   - bufs[i][offset:] holds one packet, and offset must be at least
//     [Headroom];
//   - Read needs len(sizes) >= len(bufs); to take a segmented packet whole
//     it needs len(bufs) >= BatchSize() and every buffer at least
//     offset+MTU bytes long, or it returns the segments that fit with
//     [golang.zx2c4.com/wireguard/tun.ErrTooManySegments];
//   - the buffers stay the caller's; Write may modify them (GRO coalesces
//     into the first packet of a flow and writes headers into the
//     headroom) and, on Linux, returns the number of bytes it wrote
//     including virtio-net headers, not, as wireguard-go's interface
//     documents, the number of packets;
//   - one goroutine may Read while another Writes; Read and Write each
//     serialise their own callers;
//   - Close makes a blocked Read return, and later Reads and Writes fail,
//     with an error that matches both [net.ErrClosed] and [os.ErrClosed].
//
// Device shadows wireguard-go methods where it must: Read and Write only
// to map the closed error, Name to return a string without an error, MTU
// to work from any thread (wireguard-go's asks the network namespace of
// the calling thread for the link), and Events, which Device serves
// itself. *Device therefore does not satisfy the wireguard-go Device
// interface; the embedded field (d.Device) does, though its Events channel
// must not be read directly.
type Device struct {
	wgtun.Device

	name     string
	offloads bool
	ctlFD    int // a socket in the link's network namespace, for MTU; -1 if none
	endHost  bool

	sysMu   sync.Mutex // guards sysctls, hasIPv6 and v6Pending
	hasIPv6 bool       // the link has IPv6 addresses (else IPv6 is off on it)
	// sysctls maps each sysctl key that the device changed to the value
	// it held before.
	sysctls map[string]string
	// v6Pending: the link has no IPv6 configuration (an MTU below
	// MinIPv6MTU removes it), so its IPv6 end-host sysctls are yet to be
	// set once an MTU change brings it back.
	v6Pending bool

	events chan wgtun.Event // fed by runEvents, closed when it returns
	done   chan struct{}    // closed when runEvents returns

	closed    atomic.Bool // set when Close starts
	closeOnce sync.Once
	closeErr  error
}

// ErrClosed is returned by Read and Write once the device is closed. It
// matches [net.ErrClosed] and [os.ErrClosed] with [errors.Is].
var ErrClosed error = closedError{}

type closedError struct{}

func (closedError) Error() string { return "tun device closed" }

func (closedError) Is(target error) bool {
	return target == net.ErrClosed || target == os.ErrClosed
}

// Read reads one or more packets, as wireguard-go's Read does (see
// [Device]).
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.Device.Read(bufs, sizes, offset)
	if err != nil && (d.closed.Load() || errors.Is(err, os.ErrClosed)) {
		// When closing, wireguard-go's netlink listener may hand Read
		// its own error ("netlink socket closed") before Read sees the
		// closed file.
		err = ErrClosed
	}
	return n, err
}

// Write writes a batch of packets, as wireguard-go's Write does (see
// [Device]).
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	n, err := d.Device.Write(bufs, offset)
	if err != nil && (d.closed.Load() || errors.Is(err, os.ErrClosed)) {
		err = ErrClosed
	}
	return n, err
}

// Name returns the interface name.
func (d *Device) Name() string { return d.name }

// Offloads reports whether virtio-net-hdr offloads are active: the device
// was opened with IFF_VNET_HDR and the kernel accepted TUNSETOFFLOAD with
// checksum and TSO4/TSO6 offload. wireguard-go does not export this; it
// does set BatchSize to more than one exactly when it enabled them, and
// Create cross-checks that with the IFF_VNET_HDR flag read back from the
// file descriptor (TUNGETIFF). Whether USO (Linux 6.2+) is on as well is
// not reported.
func (d *Device) Offloads() bool { return d.offloads }

// Events returns a channel of link events (wireguard-go's EventUp,
// EventDown, EventMTUUpdate). Device reads wireguard-go's own channel
// itself, because its listener goroutines block when nobody does; events
// that arrive while this channel's buffer is full are dropped. The
// channel is closed once the device is closed.
func (d *Device) Events() <-chan wgtun.Event { return d.events }

// Close closes the device's file descriptor, upon which the kernel removes
// the link with its addresses and routes, and waits for the device's
// goroutines to exit. It is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.closed.Store(true)
		d.closeErr = d.Device.Close()
		if d.done != nil {
			// wireguard-go closes the event channel once its listeners
			// have stopped; don't hang if one of them never does.
			select {
			case <-d.done:
			case <-time.After(closeWait):
				d.closeErr = errors.Join(d.closeErr, errors.New("event listener did not stop"))
			}
		}
		d.closeCtl()
		if d.closeErr != nil {
			d.closeErr = fmt.Errorf("close tun %s: %w", d.name, d.closeErr)
		}
	})
	return d.closeErr
}

// runEvents forwards wireguard-go's events until it closes their channel,
// which Close causes.
func (d *Device) runEvents() {
	defer close(d.done)
	defer close(d.events)
	for ev := range d.Device.Events() {
		select {
		case d.events <- ev:
		default:
		}
	}
}

func newDevice(wd wgtun.Device, name string) *Device {
	d := &Device{
		Device: wd,
		name:   name,
		events: make(chan wgtun.Event, 8),
		done:   make(chan struct{}),
		ctlFD:  -1,
	}
	go d.runEvents()
	return d
}
