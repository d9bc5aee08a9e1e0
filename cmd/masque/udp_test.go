package main

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/masque-vpn/masque/tunnel"
)

func TestUDPOptionsValidate(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := func() udpOptions {
		return udpOptions{serverOptions: serverOptions{servers: []string{"198.18.1.2:4433"}, connectTimeout: time.Second},
			listen: "127.0.0.1:5353", target: "198.18.2.2:53", idleTimeout: time.Minute, maxFlows: 8, logLevel: "info"}
	}
	tests := []struct {
		name    string
		mod     func(o *udpOptions)
		want    []tunnel.UDPForward
		wantErr []string
	}{
		{name: "listen and target", mod: func(*udpOptions) {},
			want: []tunnel.UDPForward{{Listen: "127.0.0.1:5353", Target: "198.18.2.2:53"}}},
		{name: "forwards too", mod: func(o *udpOptions) {
			o.forwards = []string{"[::1]:7000=echo.example:7", "127.0.0.1:0=[2001:db8::2]:9"}
			o.tokenFile = token
		}, want: []tunnel.UDPForward{
			{Listen: "127.0.0.1:5353", Target: "198.18.2.2:53"},
			{Listen: "[::1]:7000", Target: "echo.example:7"},
			{Listen: "127.0.0.1:0", Target: "[2001:db8::2]:9"},
		}},
		{name: "only forwards", mod: func(o *udpOptions) { o.listen, o.target, o.forwards = "", "", []string{"127.0.0.1:1=a.example:2"} },
			want: []tunnel.UDPForward{{Listen: "127.0.0.1:1", Target: "a.example:2"}}},

		{name: "nothing to forward", mod: func(o *udpOptions) { o.listen, o.target = "", "" }, wantErr: []string{"need --listen and --target"}},
		{name: "listen without target", mod: func(o *udpOptions) { o.target = "" }, wantErr: []string{"go together"}},
		{name: "everything wrong", mod: func(o *udpOptions) {
			o.servers = []string{"nohost"}
			o.listen = "localhost"
			o.forwards = []string{"nope", "127.0.0.1:1=x:0", "127.0.0.1:1=x:99999", "example.com:5=x:1"}
			o.idleTimeout, o.maxFlows, o.connectTimeout = 0, 0, 0
			o.logLevel = "loud"
			o.template = "https://x/"
			o.cert = "c"
		}, wantErr: []string{"--server", `listen "localhost"`, `--forward "nope"`, `target "x:0"`, `target "x:99999"`,
			`listen "127.0.0.1:1": given twice`, `listen "example.com:5"`, "--idle-timeout", "--max-flows", "--connect-timeout",
			"--log-level", "--template", "--cert and --key"}},
		{name: "missing token file", mod: func(o *udpOptions) { o.tokenFile = filepath.Join(dir, "nope") }, wantErr: []string{"--token-file"}},
		{name: "token and cert", mod: func(o *udpOptions) { o.tokenFile, o.cert, o.key = token, "c", "k" }, wantErr: []string{"exclusive"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base()
			tt.mod(&o)
			c, err := o.validate()
			if len(tt.wantErr) > 0 {
				var ue usageError
				if !errors.As(err, &ue) {
					t.Fatalf("validate = %v, want a usage error", err)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("validate error lacks %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("validate = %v", err)
			}
			if len(c.forwards) != len(tt.want) {
				t.Fatalf("forwards = %v, want %v", c.forwards, tt.want)
			}
			for i := range tt.want {
				if c.forwards[i] != tt.want[i] {
					t.Errorf("forwards[%d] = %v, want %v", i, c.forwards[i], tt.want[i])
				}
			}
			if o.tokenFile != "" && c.token != "secret" {
				t.Errorf("token = %q, want secret", c.token)
			}
		})
	}
}

func TestUDPExitCodes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no server", []string{"udp", "--listen", "127.0.0.1:0", "--target", "198.18.2.2:53"}, exitUsage},
		{"bad target", []string{"udp", "--server", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--target", "198.18.2.2"}, exitUsage},
		{"bad forward", []string{"udp", "--server", "127.0.0.1:1", "--forward", "x"}, exitUsage},
		{"unreachable server", []string{"udp", "--server", "127.0.0.1:9", "--listen", "127.0.0.1:0", "--target", "198.18.2.2:53", "--connect-timeout", "200ms", "--state-dir", t.TempDir()}, exitFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := execute(tt.args); got != tt.want {
				t.Errorf("execute(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}

func TestPrintUDPStatus(t *testing.T) {
	st := &Status{
		State: "forwarding", Server: "198.18.1.2:4433", TxPackets: 3, TxBytes: 30, RxPackets: 2, RxBytes: 20,
		Drops: map[string]uint64{"too_big": 1, "flow_refused": 2}, RTTms: 0.25, UptimeSeconds: 61,
		UDP: &UDPStatus{
			Forwards: []UDPForwardStatus{{Listen: "127.0.0.1:5353", Target: "198.18.2.2:53", Flows: 1}},
			Flows:    1, FlowsTotal: 4, FlowsRefused: 1, MaxFlows: 64, IdleTimeoutSeconds: 120, MaxPayload: 1398,
			LastRefusal: "server refused the flow: 403 forbidden",
		},
	}
	var b bytes.Buffer
	printUDPStatus(&b, st)
	want := `state:     forwarding
server:    198.18.1.2:4433
forward:   127.0.0.1:5353 -> 198.18.2.2:53 (1 flows)
flows:     1 open (at most 64, idle timeout 2m0s), 4 opened, 1 refused
sent:      3 datagrams, 30 bytes
received:  2 datagrams, 20 bytes
dropped:   flow_refused=2 too_big=1
max size:  1398 bytes per datagram
refused:   server refused the flow: 403 forbidden
rtt:       0.25 ms
uptime:    1m1s
`
	if got := b.String(); got != want {
		t.Errorf("printUDPStatus =\n%s\nwant\n%s", got, want)
	}
}

// FuzzForwardSpec: what checkListen and checkTarget accept is an ADDR:PORT
// the forwarder can listen on and a HOST:PORT it can ask the server for.
func FuzzForwardSpec(f *testing.F) {
	for _, s := range []string{"127.0.0.1:5353", ":0", "localhost:53", "[::1]:53", "[fe80::1%eth0]:53", "dns.example:53", "x:0", "x:65536", "[::1]", ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkListen(s) == nil {
			host, port, err := net.SplitHostPort(s)
			p, perr := strconv.ParseUint(port, 10, 16)
			if err != nil || perr != nil {
				t.Fatalf("checkListen(%q) accepted what is no ADDR:PORT", s)
			}
			if _, aerr := netip.ParseAddr(host); p != 0 && host != "" && host != "localhost" && aerr != nil {
				t.Fatalf("checkListen(%q) accepted host %q", s, host)
			}
		}
		if checkTarget(s) == nil {
			host, port, err := net.SplitHostPort(s)
			p, perr := strconv.ParseUint(port, 10, 16)
			if err != nil || host == "" || perr != nil || p == 0 {
				t.Fatalf("checkTarget(%q) accepted what is no HOST:PORT with a port 1-65535", s)
			}
		}
	})
}
