package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// buildInfo is what the binary knows of its build, for --version and the
// masque_build_info metric.
type buildInfo struct {
	Version   string // the main module's version; "(devel)" if the build stamped none
	Revision  string // the VCS revision, short, with "-dirty" if the tree was modified; "unknown" without VCS
	GoVersion string
}

// String formats b as --version prints it after the command's name.
func (b buildInfo) String() string {
	return fmt.Sprintf("%s (%s, %s)", b.Version, b.Revision, b.GoVersion)
}

// readBuildInfo returns this binary's build information.
func readBuildInfo() buildInfo {
	bi, _ := debug.ReadBuildInfo()
	return parseBuildInfo(bi)
}

// shortRevision is how many characters of the revision --version shows:
// as many as a Go pseudo-version has.
const shortRevision = 12

// parseBuildInfo extracts a buildInfo from what the Go toolchain stamps
// into a binary (bi may be nil: a binary built without module support).
func parseBuildInfo(bi *debug.BuildInfo) buildInfo {
	b := buildInfo{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
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
