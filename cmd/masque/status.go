package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/masque-vpn/masque/tun"
	"github.com/masque-vpn/masque/tunnel"
	"github.com/spf13/cobra"
)

const statusSocket = "masque.sock"

// Status is what masque status reports. Its JSON form is stable: fields are
// only ever added.
type Status struct {
	State         string            `json:"state"` // connecting, up, reconnecting
	Instance      string            `json:"instance,omitempty"`
	PID           int               `json:"pid,omitempty"`
	Server        string            `json:"server"`
	Addresses     []string          `json:"addresses"`
	Routes        []string          `json:"routes"`
	DNS           []string          `json:"dns,omitempty"`
	Tun           string            `json:"tun"`
	TxBytes       uint64            `json:"tx_bytes"`
	RxBytes       uint64            `json:"rx_bytes"`
	TxPackets     uint64            `json:"tx_packets"`
	RxPackets     uint64            `json:"rx_packets"`
	Drops         map[string]uint64 `json:"drops,omitempty"`
	Refused       map[string]uint64 `json:"refused,omitempty"` // from the server's capsules, by kind
	RTTms         float64           `json:"rtt_ms"`
	UptimeSeconds float64           `json:"uptime_seconds"`
	KillSwitch    bool              `json:"kill_switch,omitempty"`
	Reconnects    int               `json:"reconnects,omitempty"`
	Failovers     int               `json:"failovers,omitempty"` // reconnects that moved to another server
	UDP           *UDPStatus        `json:"udp,omitempty"`       // masque udp only
}

// statusServer answers status requests on a unix socket.
type statusServer struct {
	cfg *upConfig

	mu           sync.Mutex // guards the fields below
	server       string     // the session's, as the user named it
	client       *tunnel.Client
	routes       []netip.Prefix
	killSwitch   bool
	reconnecting bool
	reconnects   int
	failovers    int
}

// newStatusServer reports a tunnel that is connecting until setUp.
func newStatusServer(cfg *upConfig) *statusServer { return &statusServer{cfg: cfg} }

// setUp reports the tunnel up on its first session, on server.
func (s *statusServer) setUp(server string, c *tunnel.Client, routes []netip.Prefix, killSwitch bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.server, s.client, s.routes, s.killSwitch = server, c, routes, killSwitch
}

// setRoutes reports the routes the host carries now.
func (s *statusServer) setRoutes(routes []netip.Prefix) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes = routes
}

// onEvent follows the Agent (tunnel.AgentConfig.OnEvent).
func (s *statusServer) onEvent(e tunnel.AgentEvent) {
	switch e.Kind {
	case tunnel.AgentLost:
		s.setReconnecting()
	case tunnel.AgentBack:
		s.mu.Lock()
		defer s.mu.Unlock()
		s.server, s.client, s.reconnecting = e.Server.Addr, e.Client, false
		s.reconnects++
		if e.Failover {
			s.failovers++
		}
	}
}

// setReconnecting reports the tunnel lost and being re-established.
func (s *statusServer) setReconnecting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reconnecting = true
}

func (s *statusServer) status() Status {
	s.mu.Lock()
	client, reconnecting, reconnects := s.client, s.reconnecting, s.reconnects
	routes, killSwitch, server, failovers := s.routes, s.killSwitch, s.server, s.failovers
	s.mu.Unlock()
	if client == nil {
		return Status{State: "connecting", Instance: s.cfg.instance, PID: os.Getpid(), Server: strings.Join(s.cfg.servers, ","), Tun: s.cfg.tun,
			Addresses: []string{}, Routes: []string{}}
	}
	st := client.Stats()
	state := "up"
	if reconnecting {
		state = "reconnecting"
	}
	out := Status{
		State:         state,
		Instance:      s.cfg.instance,
		PID:           os.Getpid(),
		Reconnects:    reconnects,
		Failovers:     failovers,
		Server:        server,
		Tun:           s.cfg.tun,
		TxBytes:       st.TxBytes,
		RxBytes:       st.RxBytes,
		TxPackets:     st.TxPackets,
		RxPackets:     st.RxPackets,
		Drops:         st.Drops,
		Refused:       st.Refused,
		KillSwitch:    killSwitch,
		RTTms:         float64(st.RTT.Microseconds()) / 1000,
		UptimeSeconds: st.Uptime.Seconds(),
		Addresses:     []string{},
		Routes:        []string{},
	}
	for _, a := range client.Addresses() {
		out.Addresses = append(out.Addresses, a.String())
	}
	for _, r := range routes {
		out.Routes = append(out.Routes, r.String())
	}
	for _, d := range client.DNS() {
		out.DNS = append(out.DNS, d.String())
	}
	return out
}

// statusListener serves GET /status, a JSON [Status], and POST /down,
// which has the run end as Ctrl-C would (stop), on a unix socket (mode
// 0600) until closed. masque up and masque udp both answer this way.
type statusListener struct {
	srv  *http.Server
	path string
	done chan struct{}
}

func listenStatus(path string, status func() Status, stop func()) (*statusListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	_ = os.Remove(path) // a stale socket of a crashed run
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(status())
	})
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(map[string]int{"pid": os.Getpid()})
		stop()
	})
	// Go profiles, for root only like the rest of the socket:
	// curl --unix-socket /run/masque/default/masque.sock http://x/debug/pprof/profile
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s := &statusListener{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		path: path,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// close stops the server, waits for its goroutine and removes the socket.
func (s *statusListener) close() {
	s.srv.Close()
	<-s.done
	os.Remove(s.path)
}

func newStatusCmd() *cobra.Command {
	var (
		stateDir string
		asJSON   bool
		pf       profileFlags
	)
	cmd := &cobra.Command{
		Use:   "status [NAME] [--json]",
		Short: "Show an instance's state and counters",
		Example: `  masque status          # the default instance
  masque status work --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := instanceDirs(cmd, &pf, args, &stateDir, nil)
			if err != nil {
				return err
			}
			st, err := queryStatus(filepath.Join(stateDir, statusSocket))
			if errors.Is(err, errNotRunning) {
				return notRunning(name, stateDir)
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			if st.UDP != nil {
				printUDPStatus(out, st)
				return nil
			}
			fmt.Fprintf(out, "state:     %s\n", st.State)
			if st.Instance != "" {
				fmt.Fprintf(out, "instance:  %s (pid %d)\n", st.Instance, st.PID)
			}
			fmt.Fprintf(out, "server:    %s\n", st.Server)
			fmt.Fprintf(out, "tun:       %s\n", st.Tun)
			fmt.Fprintf(out, "addresses: %v\n", st.Addresses)
			fmt.Fprintf(out, "routes:    %v\n", st.Routes)
			if len(st.DNS) > 0 {
				fmt.Fprintf(out, "dns:       %v\n", st.DNS)
			}
			if st.KillSwitch {
				fmt.Fprintf(out, "kill switch: on\n")
			}
			if st.Reconnects > 0 {
				fmt.Fprintf(out, "reconnects: %d\n", st.Reconnects)
			}
			if st.Failovers > 0 {
				fmt.Fprintf(out, "failovers: %d\n", st.Failovers)
			}
			fmt.Fprintf(out, "sent:      %d packets, %d bytes\n", st.TxPackets, st.TxBytes)
			fmt.Fprintf(out, "received:  %d packets, %d bytes\n", st.RxPackets, st.RxBytes)
			if len(st.Drops) > 0 {
				fmt.Fprintf(out, "dropped:   %s\n", countList(st.Drops))
			}
			if len(st.Refused) > 0 {
				fmt.Fprintf(out, "refused from the server: %s\n", countList(st.Refused))
			}
			fmt.Fprintf(out, "rtt:       %.2f ms\n", st.RTTms)
			fmt.Fprintf(out, "uptime:    %s\n", (time.Duration(st.UptimeSeconds) * time.Second).String())
			return nil
		},
	}
	pf.addFlags(cmd.Flags(), false)
	cmd.Flags().StringVar(&stateDir, "state-dir", instanceStateDir(defaultInstance), "directory of the status socket (default /run/masque/NAME)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// countList formats counters by name as "a=1 b=2", in name order.
func countList(m map[string]uint64) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	return b.String()
}

// statusClient talks HTTP to the status socket sock.
func statusClient(sock string) *http.Client {
	return &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

func queryStatus(sock string) (*Status, error) {
	rsp, err := statusClient(sock).Get("http://masque/status")
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("status socket %s: permission denied: run as root (sudo masque status)", sock)
		}
		if errors.Is(err, os.ErrNotExist) || isConnRefused(err) {
			return nil, errNotRunning
		}
		return nil, fmt.Errorf("query %s: %v", sock, err)
	}
	defer rsp.Body.Close()
	var st Status
	if err := json.NewDecoder(rsp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("query %s: %v", sock, err)
	}
	return &st, nil
}

// errNotRunning: nothing answers on the status socket.
var errNotRunning = errors.New("no tunnel is up (no masque up is running)")

// leftovers is what an instance without a live status socket left.
type leftovers int

const (
	leftNothing    leftovers = iota // no state file: never up, or it exited cleanly
	leftAlive                       // its process runs, but the socket does not answer
	leftChanges                     // a crashed run's changes
	leftBlocked                     // a crashed run's changes, the kill switch among them
	leftUnreadable                  // a state file that cannot be read (corrupt, untrusted)
	leftDenied                      // not root: the state directory is closed to us
)

// inspectLeftovers reads the state file in stateDir.
func inspectLeftovers(stateDir string) (leftovers, *tun.State, error) {
	st, err := tun.ReadState(filepath.Join(stateDir, "state.json"))
	switch {
	case errors.Is(err, os.ErrPermission):
		return leftDenied, nil, err
	case errors.Is(err, fs.ErrNotExist):
		return leftNothing, nil, nil
	case err != nil:
		return leftUnreadable, nil, err
	case processAlive(st.PID):
		return leftAlive, st, nil
	case slices.ContainsFunc(st.NFTables, isKillSwitchTable):
		return leftBlocked, st, nil
	}
	return leftChanges, st, nil
}

// notRunning explains why instance name has no running masque: nothing
// was ever up, or a crashed run left its changes (and maybe its kill
// switch) on the host, which only masque down undoes.
func notRunning(name, stateDir string) error {
	kind, st, err := inspectLeftovers(stateDir)
	switch kind {
	case leftDenied:
		return fmt.Errorf("state directory %s: permission denied: run as root (sudo masque status %s)", stateDir, name)
	case leftNothing:
		return fmt.Errorf("instance %s: no tunnel is up (no masque up is running)", name)
	case leftUnreadable:
		return fmt.Errorf("instance %s: no masque up is running, and its state file is unreadable (%v): run masque down %s", name, oneLine(err), name)
	case leftAlive:
		return fmt.Errorf("instance %s: masque up (pid %d) is running but its status socket does not answer", name, st.PID)
	case leftBlocked:
		return fmt.Errorf("host blocked by a crashed masque up (pid %d, kill switch on): run masque down %s", st.PID, name)
	}
	return fmt.Errorf("instance %s: a crashed masque up (pid %d) left %s: run masque down %s", name, st.PID, describeState(st), name)
}

// isKillSwitchTable reports whether t is the kill switch's nftables table.
func isKillSwitchTable(t string) bool {
	return t == tun.DefaultKillSwitchTable || strings.HasPrefix(t, tun.DefaultKillSwitchTable+"_")
}

func isConnRefused(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se)
}
