// Package flagfile reads a command's configuration file: TOML whose
// top-level keys are the command's flags (`server = "vpn.example:443"`,
// `route = ["10.0.0.0/8"]`, `kill-switch = false`). The flags are the
// schema, so a setting is written once, as its flag. Values merge in this
// order, each over the one before: the flag's default, the file, the
// environment (a prefix and the flag's name in capitals with _ for -,
// MASQUE_TOKEN_FILE), the command line.
//
// go-toml reads the file; the merge is ours, over pflag's flags. koanf
// would merge as well, but it forgets where a key stood in the file, and
// every problem here is reported at once with its line and column.
package flagfile

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"github.com/spf13/pflag"
)

// Options say how Apply reads a file and the environment.
type Options struct {
	// EnvPrefix starts the environment variables that set flags
	// ("MASQUE_"); empty: the environment sets nothing.
	EnvPrefix string
	// Environ is the environment, as os.Environ returns it.
	Environ []string
	// Reserved are flags neither a file nor the environment may set (the
	// one that names the file, help).
	Reserved []string
	// CommandLine are the flags the command line set, which win over the
	// file and the environment; nil: those fs reports changed now.
	CommandLine map[string]bool
}

// Errors are a file's problems, each "FILE:LINE:COL: what", one to a
// line.
type Errors []error

func (e Errors) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return strings.Join(s, "\n")
}

// Repeatable is implemented by a flag.Value that a flag may carry several
// times without being a pflag slice (each element is Set in turn).
type Repeatable interface {
	pflag.Value
	Repeatable()
}

// CommandLine returns the flags of fs that are changed now: after the
// command line was parsed, those it set.
func CommandLine(fs *pflag.FlagSet) map[string]bool {
	m := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { m[f.Name] = true })
	return m
}

// Apply sets the flags of fs that the command line did not set from the
// file at path (none if path is empty) and then from the environment,
// and marks them changed. It reports every problem at once, as Errors.
func Apply(fs *pflag.FlagSet, path string, o Options) error {
	cmdline := o.CommandLine
	if cmdline == nil {
		cmdline = CommandLine(fs)
	}
	var errs Errors
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s: no such file", path)
			}
			return err
		}
		errs = append(errs, applyTOML(fs, cmdline, o.Reserved, path, b)...)
	}
	if o.EnvPrefix != "" {
		errs = append(errs, applyEnv(fs, cmdline, o, o.Environ)...)
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// ApplyTOML is Apply's reading of the TOML document b, from file, with
// the given command-line and reserved flags.
func ApplyTOML(fs *pflag.FlagSet, cmdline map[string]bool, reserved []string, file string, b []byte) []error {
	return applyTOML(fs, cmdline, reserved, file, b)
}

func applyTOML(fs *pflag.FlagSet, cmdline map[string]bool, reserved []string, file string, b []byte) []error {
	// go-toml's decoder finds syntax errors and duplicate keys (the
	// document is not TOML then) and types the values.
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return []error{fmt.Errorf("%s:%d:%d: %s", file, row, col, de.Error())}
		}
		return []error{fmt.Errorf("%s: %v", file, err)}
	}
	// The parser says where each key stands.
	var errs []error
	p := unstable.Parser{}
	p.Reset(b)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			at := p.Shape(e.Raw).Start
			if k := e.Key(); k.Next() {
				at = p.Shape(k.Node().Raw).Start
			}
			errs = append(errs, fmt.Errorf("%s:%d:%d: tables are not used: write each setting as key = value at the top", file, at.Line, at.Column))
			return errs
		case unstable.KeyValue:
		default:
			continue
		}
		var parts []string
		var at unstable.Position
		for k := e.Key(); k.Next(); {
			if len(parts) == 0 {
				at = p.Shape(k.Node().Raw).Start
			}
			parts = append(parts, string(k.Node().Data))
		}
		where := fmt.Sprintf("%s:%d:%d", file, at.Line, at.Column)
		key := strings.Join(parts, ".")
		if err := setFromTOML(fs, cmdline, reserved, key, doc[parts[0]], len(parts)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", where, err))
		}
	}
	if err := p.Error(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %v", file, err))
	}
	return errs
}

// setFromTOML sets the flag key from a TOML value v, unless the command
// line set it.
func setFromTOML(fs *pflag.FlagSet, cmdline map[string]bool, reserved []string, key string, v any, parts int) error {
	f := fs.Lookup(key)
	if parts > 1 || f == nil || slices.Contains(reserved, key) {
		if alt := strings.ReplaceAll(key, "_", "-"); alt != key && fs.Lookup(alt) != nil && !slices.Contains(reserved, alt) {
			return fmt.Errorf("unknown key %q (did you mean %q?)", key, alt)
		}
		return fmt.Errorf("unknown key %q", key)
	}
	vals, err := tomlStrings(f, v)
	if err != nil {
		return fmt.Errorf("%s: %v", key, err)
	}
	if cmdline[key] {
		return nil // the command line wins
	}
	return setFlag(f, vals)
}

// isList reports whether f takes several values.
func isList(f *pflag.Flag) bool {
	if _, ok := f.Value.(pflag.SliceValue); ok {
		return true
	}
	_, ok := f.Value.(Repeatable)
	return ok
}

// tomlStrings turns a TOML value into the strings pflag parses, checking
// its type against the flag's.
func tomlStrings(f *pflag.Flag, v any) ([]string, error) {
	typ := f.Value.Type()
	list := isList(f)
	var items []any
	switch v := v.(type) {
	case []any:
		if !list {
			return nil, fmt.Errorf("want %s, not a list", typeWord(typ, false))
		}
		items = v
	default:
		items = []any{v}
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		switch it := it.(type) {
		case string:
			if typ == "bool" || typ == "int" {
				return nil, fmt.Errorf("want %s, not a string (write it without quotes)", typeWord(typ, list))
			}
			out = append(out, it)
		case bool:
			if typ != "bool" {
				return nil, fmt.Errorf("want %s, not a boolean", typeWord(typ, list))
			}
			out = append(out, strconv.FormatBool(it))
		case int64:
			if typ != "int" {
				return nil, fmt.Errorf("want %s, not a number", typeWord(typ, list))
			}
			out = append(out, strconv.FormatInt(it, 10))
		default:
			return nil, fmt.Errorf("want %s", typeWord(typ, list))
		}
	}
	return out, nil
}

// typeWord names a flag's type for an error line.
func typeWord(typ string, list bool) string {
	switch {
	case list:
		return "a string or a list of strings"
	case typ == "bool":
		return "true or false"
	case typ == "int":
		return "a number"
	case typ == "duration":
		return `a duration in quotes ("10s")`
	}
	return "a string"
}

// setFlag sets f to vals, replacing a list flag's default, and marks it
// changed.
func setFlag(f *pflag.Flag, vals []string) error {
	var err error
	switch v := f.Value.(type) {
	case pflag.SliceValue:
		err = v.Replace(vals)
	case Repeatable:
		for _, s := range vals {
			if err = v.Set(s); err != nil {
				break
			}
		}
	default:
		err = f.Value.Set(vals[0])
	}
	if err != nil {
		return fmt.Errorf("%s: %v", f.Name, err)
	}
	f.Changed = true
	return nil
}

// applyEnv sets the flags the command line did not set from the
// variables of environ that start with o.EnvPrefix (lists
// comma-separated). Variables that name no flag are left alone: the shell
// may hold others of ours.
func applyEnv(fs *pflag.FlagSet, cmdline map[string]bool, o Options, environ []string) []error {
	var errs []error
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, o.EnvPrefix) {
			continue
		}
		name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, o.EnvPrefix), "_", "-"))
		f := fs.Lookup(name)
		if f == nil || cmdline[name] || slices.Contains(o.Reserved, name) {
			continue
		}
		vals := []string{v}
		if isList(f) {
			vals = strings.Split(v, ",")
		}
		if err := setFlag(f, vals); err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", k, err))
		}
	}
	return errs
}
