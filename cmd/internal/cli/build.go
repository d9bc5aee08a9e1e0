// Package cli holds what both commands, masque and masqued, have alike:
// the build they report (--version, masque_build_info), the man pages,
// the log format.
package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo is what the binary knows of its build, for --version and the
// masque_build_info metric.
type BuildInfo struct {
	Version   string // the main module's version; "(devel)" if the build stamped none
	Revision  string // the VCS revision, short, with "-dirty" if the tree was modified; "unknown" without VCS
	GoVersion string
}

// String formats b as --version prints it after the command's name.
func (b BuildInfo) String() string {
	return fmt.Sprintf("%s (%s, %s)", b.Version, b.Revision, b.GoVersion)
}

// ReadBuildInfo returns this binary's build information.
func ReadBuildInfo() BuildInfo {
	bi, _ := debug.ReadBuildInfo()
	return ParseBuildInfo(bi)
}

// shortRevision is how many characters of the revision --version shows:
// as many as a Go pseudo-version has.
const shortRevision = 12

// ParseBuildInfo extracts a BuildInfo from what the Go toolchain stamps
// into a binary (bi may be nil: a binary built without module support).
func ParseBuildInfo(bi *debug.BuildInfo) BuildInfo {
	b := BuildInfo{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
	if bi == nil {
		return b
	}
	if bi.Main.Version != "" {
		b.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		b.GoVersion = bi.GoVersion
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" {
		b.Revision = rev[:min(len(rev), shortRevision)]
		if dirty {
			b.Revision += "-dirty"
		}
	}
	return b
}

// BuildInfoCollector is the masque_build_info gauge of the command who:
// always 1, its labels say which build is running, so that a dashboard
// can tell hosts on different builds apart.
func BuildInfoCollector(b BuildInfo, who string) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "masque_build_info",
		Help:        "A metric with a constant 1 value labeled by the version, VCS revision and Go version " + who + " was built from.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	}, func() float64 { return 1 })
}
