package tun

import (
	"bytes"
	"go/format"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// goFiles returns the Go files of this package and its subpackages.
func goFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestDeps enforces DESIGN.md's import direction: tun imports libraries
// only, no other package of this module.
func TestDeps(t *testing.T) {
	const module = "github.com/masque-vpn/masque/"
	fset := token.NewFileSet()
	for _, path := range goFiles(t) {
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, module) && !strings.HasPrefix(p, module+"tun/") {
				t.Errorf("%s imports %s: tun may import libraries only", path, p)
			}
		}
	}
}

// TestFormat fails when a file is not gofmt-formatted.
func TestFormat(t *testing.T) {
	for _, path := range goFiles(t) {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := format.Source(src)
		if err != nil {
			t.Fatalf("format %s: %v", path, err)
		}
		if !bytes.Equal(got, src) {
			t.Errorf("%s is not gofmt-formatted", path)
		}
	}
}
