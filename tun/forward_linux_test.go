package tun

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/masque-vpn/masque/tun/internal/nstest"
)

func TestSetSysctl(t *testing.T) {
	nstest.New(t)
	const key = "net/ipv4/ip_forward"
	// A new namespace may inherit the host's value; start from a known one.
	if _, err := SetSysctl(key, "0"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		value, wantOld, wantNow string
	}{
		{"1", "0", "1"},
		{"1", "1", "1"}, // unchanged: not written
		{"0", "1", "0"},
	}
	for _, tt := range tests {
		old, err := SetSysctl(key, tt.value)
		if err != nil {
			t.Fatalf("SetSysctl(%s, %s) = %v", key, tt.value, err)
		}
		if old != tt.wantOld {
			t.Errorf("SetSysctl(%s, %s) = %q, want %q", key, tt.value, old, tt.wantOld)
		}
		b, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != tt.wantNow {
			t.Errorf("%s = %q after SetSysctl(%s), want %q", key, got, tt.value, tt.wantNow)
		}
	}

	// A multi-valued sysctl comes back as it must be written.
	const ports = "net/ipv4/ip_local_port_range"
	old, err := SetSysctl(ports, "40000\t50000")
	if err != nil {
		t.Fatal(err)
	}
	if back, err := SetSysctl(ports, old); err != nil || back != "40000\t50000" {
		t.Errorf("SetSysctl(%s, %q) = %q, %v, want %q", ports, old, back, err, "40000\t50000")
	}

	if _, err := SetSysctl("net/ipv4/conf/nosuchlink/forwarding", "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SetSysctl(missing) = %v, want fs.ErrNotExist", err)
	}
	if _, err := SetSysctl("net/ipv4/ip_forward", "bogus"); err == nil || !strings.HasPrefix(err.Error(), `set sysctl net/ipv4/ip_forward="bogus": `) {
		t.Errorf("SetSysctl(bogus value) = %v, want write error", err)
	}
	if _, err := SetSysctl("../../etc/hostname", "x"); err == nil || !strings.Contains(err.Error(), "invalid sysctl key") {
		t.Errorf("SetSysctl(escape) = %v, want invalid key", err)
	}
}

func TestReadSysctl(t *testing.T) {
	nstest.New(t)
	for _, v := range []string{"1", "0"} {
		if _, err := SetSysctl("net/ipv4/ip_forward", v); err != nil {
			t.Fatal(err)
		}
		if got, err := ReadSysctl("net/ipv4/ip_forward"); err != nil || got != v {
			t.Errorf("ReadSysctl(net/ipv4/ip_forward) = %q, %v, want %q", got, err, v)
		}
	}
	if _, err := ReadSysctl("net/ipv4/conf/nosuchlink/forwarding"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadSysctl(missing) = %v, want fs.ErrNotExist", err)
	}
	if _, err := ReadSysctl("../../etc/hostname"); err == nil || !strings.Contains(err.Error(), "invalid sysctl key") {
		t.Errorf("ReadSysctl(outside /proc/sys) = %v, want invalid sysctl key", err)
	}
}
