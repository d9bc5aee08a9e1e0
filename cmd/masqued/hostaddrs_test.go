package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestIPNetPrefix: interface addresses keep their prefix length, IPv4 ones
// in either of the forms the net package uses.
func TestIPNetPrefix(t *testing.T) {
	tests := []struct {
		name string
		in   *net.IPNet
		want string // "" means not converted
	}{
		{"ipv4, 4-byte mask", &net.IPNet{IP: net.ParseIP("198.18.2.1"), Mask: net.CIDRMask(24, 32)}, "198.18.2.1/24"},
		{"ipv4, 16-byte mask", &net.IPNet{IP: net.ParseIP("198.18.2.1"), Mask: net.CIDRMask(120, 128)}, "198.18.2.1/24"},
		{"ipv4, 4-byte ip", &net.IPNet{IP: net.ParseIP("127.0.0.1").To4(), Mask: net.CIDRMask(8, 32)}, "127.0.0.1/8"},
		{"ipv6", &net.IPNet{IP: net.ParseIP("2001:db8:2::1"), Mask: net.CIDRMask(64, 128)}, "2001:db8:2::1/64"},
		{"ipv6 host", &net.IPNet{IP: net.ParseIP("::1"), Mask: net.CIDRMask(128, 128)}, "::1/128"},
		{"non-canonical mask", &net.IPNet{IP: net.ParseIP("198.18.2.1"), Mask: net.IPv4Mask(255, 0, 255, 0)}, ""},
		{"bad ip", &net.IPNet{IP: net.IP{1, 2, 3}, Mask: net.CIDRMask(24, 32)}, ""},
		{"ipv4 with a short 16-byte mask", &net.IPNet{IP: net.ParseIP("198.18.2.1"), Mask: net.CIDRMask(64, 128)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ipNetPrefix(tt.in)
			want, wantOK := netip.Prefix{}, tt.want != ""
			if wantOK {
				want = netip.MustParsePrefix(tt.want)
			}
			if got != want || ok != wantOK {
				t.Errorf("ipNetPrefix(%v) = %v, %v, want %v, %v", tt.in, got, ok, want, wantOK)
			}
		})
	}
}

// TestWatchAddrsStopsQuietly: stopping the address watch, as every
// SIGTERM does, logs nothing at WARN or above and leaves no goroutine
// behind (netlink's receive loop included).
func TestWatchAddrsStopsQuietly(t *testing.T) {
	tests := []struct {
		name   string
		cancel bool // cancel the context before stop
	}{
		{"stop", false},
		{"context canceled", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, stop := watchAddrs(ctx, logger)
			// Let the subscription block in its receive.
			time.Sleep(50 * time.Millisecond)
			if tt.cancel {
				cancel()
			}
			stop()
			if logs.Len() != 0 {
				t.Errorf("watchAddrs then stop logged at WARN or above:\n%s", logs.String())
			}
		})
	}
}

func TestCheckEgress(t *testing.T) {
	tests := []struct {
		name, egress string
		wantErr      string // "" means none
	}{
		{"any interface", "", ""},
		{"loopback", "lo", ""},
		{"missing", "nosuch0", "egress: this host has no interface nosuch0 (it has lo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkEgress(tt.egress)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("checkEgress(%q) = %v, want nil", tt.egress, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("checkEgress(%q) = %v, want an error containing %q", tt.egress, err, tt.wantErr)
			}
		})
	}
}
