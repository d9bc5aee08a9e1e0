package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary run as masqued, for tests that need its
// exit code and its stderr as a user sees them.
func TestMain(m *testing.M) {
	if os.Getenv("MASQUED_TEST_AS_MAIN") == "1" {
		os.Exit(execute(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// runMasqued runs masqued (this test binary as main) with args, for at
// most 20 s, and returns its exit code, stdout and stderr.
func runMasqued(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "MASQUED_TEST_AS_MAIN=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	err := cmd.Wait()
	code := 0
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("masqued %q: %v", args, err)
	}
	return code, stdout.String(), stderr.String()
}

func TestExecuteExitCodes(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("alice 0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeConfig := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := writeConfig("good.conf", fmt.Sprintf("cert = %q\nkey = %q\ntokens = %q\nlisten = \"127.0.0.1:4433\"\n", filepath.Join(pki, "server.crt"), filepath.Join(pki, "server.key"), tokens))
	unknownKey := writeConfig("unknown.conf", `lissen = "127.0.0.1:4433"`)
	missingCert := writeConfig("missing.conf", fmt.Sprintf("cert = \"/nonexistent/server.crt\"\nkey = \"/nonexistent/server.key\"\ntokens = %q\n", tokens))

	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no command", nil, exitOK},
		{"unknown flag", []string{"--bogus"}, exitUsage},
		{"unknown subcommand flag", []string{"run", "--bogus"}, exitUsage},
		{"unknown command", []string{"frobnicate"}, exitUsage},
		{"run with a bad CIDR", []string{"run", "--pool4", "10.0.0.1/8", "--cert", "x", "--key", "y", "--tokens", "z"}, exitUsage},
		{"run without a certificate", []string{"run", "--tokens", "z"}, exitUsage},
		{"run with a bad MTU", []string{"run", "--mtu", "9000", "--cert", "x", "--key", "y", "--tokens", "z"}, exitUsage},
		{"run with a missing config file", []string{"run", "--config", filepath.Join(dir, "nope.conf")}, exitUsage},
		{"run with an unknown config key", []string{"run", "--config", unknownKey}, exitUsage},
		{"run with arguments", []string{"run", "extra"}, exitUsage},
		{"cert without --dir", []string{"cert", "--host", "vpn.example.com"}, exitUsage},
		{"cert without --host", []string{"cert", "--dir", pki}, exitUsage},
		{"cert with a bad client name", []string{"cert", "--dir", pki, "--host", "h", "--client", "a b"}, exitUsage},
		{"cert with a reserved client name", []string{"cert", "--dir", pki, "--host", "h", "--client", "ca"}, exitUsage},
		{"cert with zero days", []string{"cert", "--dir", pki, "--host", "h", "--days", "0"}, exitUsage},
		// The config checks below use what this writes.
		{"cert", []string{"cert", "--dir", pki, "--host", "127.0.0.1", "--client", "alice"}, exitOK},
		{"config check", []string{"config", "check", "--config", good}, exitOK},
		{"config check with a flag override", []string{"config", "check", "--config", good, "--pool6", "off"}, exitOK},
		{"config check with a bad override", []string{"config", "check", "--config", good, "--pool6", "fd00::1/64"}, exitUsage},
		{"config check with missing files", []string{"config", "check", "--config", missingCert}, exitUsage},
		{"config check with an egress interface", []string{"config", "check", "--config", good, "--egress", "lo"}, exitOK},
		{"config check with a missing egress interface", []string{"config", "check", "--config", good, "--egress", "nosuch0"}, exitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := execute(tt.args); got != tt.want {
				t.Errorf("execute(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}

// Bad configuration files: masqued refuses each before it touches the
// network, with exit code 2 and one line on stderr that names the problem.
// "config check" and "run" take the same path.
func TestBadConfigFiles(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	if code := execute([]string{"cert", "--dir", pki, "--host", "127.0.0.1", "--client", "alice"}); code != exitOK {
		t.Fatalf("cert: exit %d", code)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tokens := write("tokens", "alice 0123456789abcdef0123456789abcdef\n")
	// with returns a configuration with cert, key and tokens files (the
	// good ones where given "") and extra lines.
	with := func(cert, tokensFile, extra string) string {
		cert = cmp.Or(cert, filepath.Join(pki, "server.crt"))
		tokensFile = cmp.Or(tokensFile, tokens)
		return fmt.Sprintf("cert = %q\nkey = %q\ntokens = %q\nlisten = \"127.0.0.1:4433\"\n%s", cert, filepath.Join(pki, "server.key"), tokensFile, extra)
	}
	files := func(extra string) string { return with("", "", extra) }
	if code, out, errOut := runMasqued(t, "config", "check", "--config", write("good.conf", files(""))); code != exitOK || out != "configuration ok\n" || errOut != "" {
		t.Fatalf("good config: exit %d, stdout %q, stderr %q; want 0 and \"configuration ok\"", code, out, errOut)
	}
	badTokens := write("bad-tokens", "alice\nbob short\nalice 0123456789abcdef0123456789abcdef\n")
	emptyTokens := write("empty-tokens", "# nobody yet\n")
	garbagePEM := write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
	tests := []struct {
		name string
		body string // the file's content; "" with path set: use path
		path string
		want []string // substrings of the one stderr line
	}{
		{"not TOML", "listen: 127.0.0.1:4433\n", "", []string{":1:7:"}},
		{"JSON", `{"listen":"127.0.0.1:4433"}`, "", []string{"this is JSON; the configuration is TOML now"}},
		{"empty file", "", "", []string{"cert: required", "key: required"}},
		{"truncated", `listen = "127.0.0.1:4433`, "", []string{":1:"}},
		{"unknown key", files(`lissen = "x"`), "", []string{`:5:1: unknown key "lissen"`}},
		{"key in the wrong case", files(`MTU = 1400`), "", []string{`unknown key "MTU"`}},
		{"key twice", files("mtu = 1400\nmtu = 1500"), "", []string{":6:1:", "mtu is already defined"}},
		{"string for a number", files(`mtu = "1400"`), "", []string{"mtu: want a number"}},
		{"number for a list", files(`dns = 5`), "", []string{"dns: want a string or a list of strings"}},
		{"bad CIDR", files(`pool4 = "100.64.0.0/33"`), "", []string{"pool4", "not a CIDR prefix"}},
		{"CIDR with host bits", files(`allow = ["169.254.1.1/16"]`), "", []string{"allow[0]", "host bits"}},
		{"bad duration", files(`lease-time = "10 minutes"`), "", []string{"lease-time", "duration"}},
		{"negative duration", files(`udp-idle-timeout = "-5s"`), "", []string{"udp-idle-timeout"}},
		{"negative limit", files(`max-conns = -1`), "", []string{"max-conns", "negative"}},
		{"negative UDP limit", files(`udp-max-flows-per-identity = -3`), "", []string{"udp-max-flows-per-identity", "negative"}},
		{"bad UDP pattern", files(`udp-allow = ["alice=*:0"]`), "", []string{`udp-allow["alice"][0]`}},
		{"several problems", files("mtu = 9000\nmax-conns = -1\ndns = [\"x\"]"), "", []string{"mtu", "max-conns", "dns[0]", "; "}},
		{"several file problems", files("lissen = 1\nmtu = \"x\""), "", []string{`:5:1: unknown key "lissen"`, ":6:1: mtu: want a number", "; "}},
		{"missing file", "", filepath.Join(dir, "nope.conf"), []string{"nope.conf", "no such file"}},
		{"a directory", "", dir, []string{"is a directory"}},
		{"tokens file malformed", with("", badTokens, ""), "", []string{"tokens file", "line 1: want IDENTITY TOKEN", "line 2: invalid token"}},
		{"tokens file missing", with("", filepath.Join(dir, "no-tokens"), ""), "", []string{"tokens file", "no such file"}},
		{"tokens file without tokens", with("", emptyTokens, ""), "", []string{"tokens file", "no tokens"}},
		{"certificate not PEM", with(tokens, "", ""), "", []string{"certificate"}},
		{"client CA not a certificate", files(`client-ca = "` + garbagePEM + `"`), "", []string{"client CA"}},
		{"egress interface missing", files(`egress = "nosuch0"`), "", []string{"egress: this host has no interface nosuch0", "lo"}},
	}
	// run reads the file the same way; it is tried with files it cannot
	// get past whatever else is wrong (it would set up the TUN, as root).
	runToo := map[string]bool{"not TOML": true, "JSON": true, "key in the wrong case": true, "missing file": true, "a directory": true}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path
			if path == "" {
				path = write(strings.ReplaceAll(tt.name, " ", "-")+".conf", tt.body)
			}
			cmds := [][]string{{"config", "check", "--config", path}}
			if runToo[tt.name] {
				cmds = append(cmds, []string{"run", "--config", path})
			}
			for _, args := range cmds {
				code, out, errOut := runMasqued(t, args...)
				if code != exitUsage {
					t.Errorf("masqued %s: exit %d, want %d (stderr %q)", args[0], code, exitUsage, errOut)
				}
				if out != "" {
					t.Errorf("masqued %s: stdout %q, want nothing", args[0], out)
				}
				line, rest, _ := strings.Cut(errOut, "\n")
				if rest != "" || !strings.HasPrefix(line, "masqued: ") {
					t.Errorf("masqued %s: stderr %q, want one line starting with \"masqued: \"", args[0], errOut)
				}
				for _, w := range tt.want {
					if !strings.Contains(line, w) {
						t.Errorf("masqued %s: stderr %q lacks %q", args[0], line, w)
					}
				}
				if strings.Contains(line, "0123456789abcdef0123456789abcdef") {
					t.Errorf("masqued %s: stderr %q shows a token", args[0], line)
				}
			}
		})
	}
}

// TestManPages: masqued man writes a page per command.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if got := execute([]string{"man", dir}); got != exitOK {
		t.Fatalf("masqued man = %d", got)
	}
	for _, page := range []string{"masqued.1", "masqued-run.1", "masqued-invite.1", "masqued-cert.1"} {
		if _, err := os.Stat(dir + "/" + page); err != nil {
			t.Errorf("no %s: %v", page, err)
		}
	}
}
