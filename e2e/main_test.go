package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// env is set up once by TestMain and read-only afterwards.
var env struct {
	skip string // non-empty: why every test skips

	dir         string // temporary directory holding everything below
	masqued     string // binaries
	masque      string
	nettool     string
	spoofclient string
	connectload string
	h3attack    string

	certDir   string            // ca.crt, server.crt/key, <client>.crt/key
	tokens    string            // the server's tokens file
	token     map[string]string // identity → token
	tokenFile map[string]string // identity → file holding only that token ("wrong" is unknown to the server)
}

// created records every namespace the tests created, so that TestMain can
// check that none outlives the run.
var created struct {
	sync.Mutex
	names []string
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		env.skip = "e2e tests need root (network namespaces, TUN devices, nftables); run as root or via sudo scripts/test.sh"
		fmt.Fprintln(os.Stderr, "e2e: skipping:", env.skip)
		return m.Run()
	}
	for _, tool := range []string{"ip", "nft", "ping", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s not found in PATH; install iproute2, nftables, iputils-ping and procps\n", tool)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "masque-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	env.dir = dir
	if err := setup(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: setup:", err)
		return 1
	}
	code := m.Run()

	// Requirement: no namespace of any test outlives it.
	created.Lock()
	defer created.Unlock()
	if left := existingNamespaces(created.names); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: namespaces left behind: %s\n", strings.Join(left, " "))
		for _, ns := range left {
			exec.Command("ip", "netns", "del", ns).Run()
		}
		code = 1
	}
	return code
}

func setup(dir string) error {
	bin := filepath.Join(dir, "bin")
	env.masqued = filepath.Join(bin, "masqued")
	env.masque = filepath.Join(bin, "masque")
	env.nettool = filepath.Join(bin, "nettool")
	env.spoofclient = filepath.Join(bin, "spoofclient")
	env.connectload = filepath.Join(bin, "connectload")
	env.h3attack = filepath.Join(bin, "h3attack")

	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	// MASQUE_E2E_RACE=1 builds the daemons with the race detector: slower,
	// but it catches races that only the real data path shows.
	var race []string
	if os.Getenv("MASQUE_E2E_RACE") == "1" {
		race = []string{"-race"}
	}
	builds := [][]string{
		append(append([]string{"build", "-buildvcs=false"}, race...), "-o", env.masqued, "./cmd/masqued"),
		append(append([]string{"build", "-buildvcs=false"}, race...), "-o", env.masque, "./cmd/masque"),
		{"build", "-buildvcs=false", "-o", env.nettool, "./e2e/internal/nettool"},
		{"build", "-buildvcs=false", "-o", env.spoofclient, "./e2e/internal/spoofclient"},
		{"build", "-buildvcs=false", "-o", env.connectload, "./e2e/internal/connectload"},
		{"build", "-buildvcs=false", "-o", env.h3attack, "./e2e/internal/h3attack"},
	}
	// MASQUE_E2E_MASQUED=PATH runs the tests against that masqued binary
	// instead of building one: to measure an older server (the "before"
	// of a fix) with today's tests.
	if prebuilt := os.Getenv("MASQUE_E2E_MASQUED"); prebuilt != "" {
		env.masqued = prebuilt
		builds = builds[1:]
	}
	for _, args := range builds {
		cmd := exec.Command(goBin, args...)
		cmd.Dir = ".." // the module root; go test runs in e2e/
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	env.certDir = filepath.Join(dir, "pki")
	cmd := exec.Command(env.masqued, "cert", "--dir", env.certDir, "--host", serverIP4, "--client", "dave")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("masqued cert: %v\n%s", err, out)
	}
	for _, f := range []string{"ca.crt", "server.crt", "server.key", "dave.crt", "dave.key"} {
		if _, err := os.Stat(filepath.Join(env.certDir, f)); err != nil {
			return fmt.Errorf("masqued cert did not write %s: %v", f, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(env.certDir, "server.key")); err == nil && fi.Mode().Perm() != 0o600 {
		return fmt.Errorf("server.key has mode %v, want 0600", fi.Mode().Perm())
	}

	env.token = map[string]string{}
	env.tokenFile = map[string]string{}
	var lines []string
	for _, id := range []string{"alice", "bob", "carol", "wrong"} {
		env.token[id] = randomHex(16)
		if id != "wrong" {
			lines = append(lines, id+" "+env.token[id])
		}
		env.tokenFile[id] = filepath.Join(dir, id+".token")
		if err := os.WriteFile(env.tokenFile[id], []byte(env.token[id]+"\n"), 0o600); err != nil {
			return err
		}
	}
	env.tokens = filepath.Join(dir, "tokens")
	return os.WriteFile(env.tokens, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// requireEnv skips t when TestMain decided that the tests cannot run here.
func requireEnv(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
}
