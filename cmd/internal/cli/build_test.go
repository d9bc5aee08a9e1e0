package cli

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseBuildInfo(t *testing.T) {
	const rev = "0123456789abcdef0123456789abcdef01234567"
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	tests := []struct {
		name string
		in   *debug.BuildInfo
		want BuildInfo
	}{
		{"no build info", nil, BuildInfo{"(devel)", "unknown", runtime.Version()}},
		{"go test", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/masque-vpn/masque"}}, BuildInfo{"(devel)", "unknown", "go1.26.8"}},
		{"release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: vcs(rev, "false")}, BuildInfo{"v1.2.3", "0123456789ab", "go1.26.8"}},
		{"modified tree", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20260101000000-0123456789ab+dirty"}, Settings: vcs(rev, "true")},
			BuildInfo{"v0.0.0-20260101000000-0123456789ab+dirty", "0123456789ab-dirty", "go1.26.8"}},
		{"short revision", &debug.BuildInfo{GoVersion: "go1.26.8", Settings: vcs("abc", "false")}, BuildInfo{"(devel)", "abc", "go1.26.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, ParseBuildInfo(tt.in)); diff != "" {
				t.Errorf("parseBuildInfo mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
