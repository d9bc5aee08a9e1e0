package tunnel

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const modulePath = "github.com/masque-vpn/masque"

// allowedImports is DESIGN.md's dependency direction, by top-level
// component: an import arrow points down only.
//
//	cmd → tunnel, tun, policy, quicio · tunnel → quicio, policy ·
//	tun, policy, quicio → (libraries only)
//
// A component may always import its own subpackages (tun/internal/...).
// e2e drives the built binaries and is outside the rule.
var allowedImports = map[string][]string{
	"cmd":    {"tunnel", "tun", "policy", "quicio"},
	"tunnel": {"quicio", "policy"},
	"tun":    nil,
	"policy": nil,
	"quicio": nil,
	"e2e":    {"*"},
}

// component returns the top-level directory of a package of this module
// ("tun" for github.com/masque-vpn/masque/tun/internal/nstest), or "" for
// a package outside the module.
func component(pkg string) string {
	rest, ok := strings.CutPrefix(pkg, modulePath+"/")
	if !ok {
		return ""
	}
	c, _, _ := strings.Cut(rest, "/")
	return c
}

// TestImportDirection enforces DESIGN.md's import direction on every
// package of the module (non-test imports; tests may use any fake).
func TestImportDirection(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	cmd := exec.Command(goBin, "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...")
	cmd.Dir = ".." // the module root
	out, err := cmd.Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("go list: %s", msg)
	}
	problems, checked := importViolations(string(out))
	for _, p := range problems {
		t.Error(p)
	}
	if checked == 0 {
		t.Fatalf("go list listed no packages:\n%s", out)
	}
}

// importViolations checks the output of
// go list -f '{{.ImportPath}} {{join .Imports " "}}' against allowedImports.
// It returns one message per bad import and the number of packages checked.
func importViolations(listOutput string) (problems []string, checked int) {
	for line := range strings.Lines(listOutput) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkg, imports := fields[0], fields[1:]
		from := component(pkg)
		allowed, known := allowedImports[from]
		if !known {
			problems = append(problems, fmt.Sprintf("package %s is in no component of DESIGN.md's import rule; add %q to allowedImports", pkg, from))
			continue
		}
		checked++
		for _, imp := range imports {
			to := component(imp)
			if to == "" || to == from || (slices.Equal(allowed, []string{"*"}) && to != "cmd") {
				continue
			}
			if !slices.Contains(allowed, to) {
				problems = append(problems, fmt.Sprintf("%s imports %s: %s may import only %v of this module (DESIGN.md \"Dependency direction\")", pkg, imp, from, orNone(allowed)))
			}
		}
	}
	return problems, checked
}

func TestImportViolations(t *testing.T) {
	m := modulePath + "/"
	list := strings.Join([]string{
		m + "cmd/masqued " + m + "tunnel " + m + "tun " + m + "policy " + m + "quicio fmt",
		m + "tunnel " + m + "quicio " + m + "policy github.com/quic-go/quic-go",
		m + "tunnel " + m + "tun",              // tunnel ↛ tun
		m + "quicio " + m + "policy",           // quicio imports no project package
		m + "policy " + m + "tunnel",           // nor does policy
		m + "tun " + m + "tun/internal/nstest", // its own subpackage is fine
		m + "tun/internal/nstest " + m + "quicio",
		m + "e2e " + m + "tunnel " + m + "tun",
		m + "scripts/x",
	}, "\n")
	problems, checked := importViolations(list)
	want := []string{
		m + "tunnel imports " + m + "tun:",
		m + "quicio imports " + m + "policy:",
		m + "policy imports " + m + "tunnel:",
		m + "tun/internal/nstest imports " + m + "quicio:",
		"package " + m + "scripts/x is in no component",
	}
	if len(problems) != len(want) || checked != 8 {
		t.Fatalf("importViolations found %d problems in %d packages, want %d in 8:\n%s", len(problems), checked, len(want), strings.Join(problems, "\n"))
	}
	for i, w := range want {
		if !strings.HasPrefix(problems[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, problems[i], w)
		}
	}
}

func orNone(s []string) any {
	if len(s) == 0 {
		return "no package"
	}
	return s
}

func TestComponent(t *testing.T) {
	tests := map[string]string{
		modulePath + "/tunnel":              "tunnel",
		modulePath + "/tun/internal/nstest": "tun",
		modulePath + "/cmd/masqued":         "cmd",
		"github.com/quic-go/quic-go":        "",
		modulePath + "x/y":                  "",
		"net/netip":                         "",
	}
	for in, want := range tests {
		if got := component(in); got != want {
			t.Errorf("component(%q) = %q, want %q", in, got, want)
		}
	}
}
