package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// A profile is a TOML file of top-level keys, each named after a flag of
// the command (`server = "vpn.example.com:443"`, `route =
// ["10.0.0.0/8"]`, `kill-switch = false`): the flags are the schema, so a
// setting is written once, as its flag. Values merge in this order, each
// over the one before: the flag's default, the file, the environment
// (MASQUE_ and the flag's name in capitals with _ for -, e.g.
// MASQUE_TOKEN_FILE), the command line.
//
// go-toml reads the file; the merge is ours, over pflag's Changed set.
// koanf would merge as well, but it forgets where a key stood in the
// file, and every problem is reported with its line and column.

// defaultConfigDir holds the profiles `masque up NAME` reads as
// NAME.conf.
const defaultConfigDir = "/etc/masque"

// defaultInstance names the instance of a run without a profile.
const defaultInstance = "default"

// envPrefix starts the environment variables that set flags.
const envPrefix = "MASQUE_"

// instanceName is what an instance (a profile) may be called: it becomes
// part of file, table and link names.
var instanceName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// checkInstanceName reports why name cannot name an instance.
func checkInstanceName(name string) error {
	if !instanceName.MatchString(name) {
		return usagef("profile name %q: want 1-32 of a-z, 0-9, - and _, starting with a letter or digit", name)
	}
	return nil
}

// profilePath returns the profile file of instance name in dir.
func profilePath(dir, name string) string { return filepath.Join(dir, name+".conf") }

// notInProfiles are flags a profile may not set: they choose the profile.
var notInProfiles = []string{"config", "config-dir", "help"}

// configErrors are a profile's problems, each "FILE:LINE:COL: what", one
// to a line.
type configErrors []error

func (e configErrors) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return strings.Join(s, "\n")
}

// applyProfile sets the flags of fs that the command line did not set
// from the profile at path (if path is not empty) and then from the
// environment. It reports every problem at once.
func applyProfile(fs *pflag.FlagSet, path string, environ []string) error {
	if err := refuseProfileOnly(fs); err != nil {
		return err
	}
	// What the command line set, before the file and the environment
	// mark theirs changed too (a profile's kill-switch = false is as
	// much a choice as --kill-switch=false).
	cmdline := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { cmdline[f.Name] = true })
	var errs configErrors
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return usagef("profile %s: no such file", path)
			}
			return usagef("profile: %v", err)
		}
		errs = append(errs, applyTOML(fs, cmdline, path, b)...)
	}
	errs = append(errs, applyEnv(fs, cmdline, environ)...)
	if len(errs) > 0 {
		return usageError{errs}
	}
	return nil
}

// refuseProfileOnly refuses inline credentials on the command line: every
// user on the host sees a command line (ps).
func refuseProfileOnly(fs *pflag.FlagSet) error {
	for _, n := range profileOnly {
		if f := fs.Lookup(n); f != nil && f.Changed {
			return usagef("--%s: a profile key, not a flag (every user sees a command line in ps): put it in the profile, or use --token-file, --ca, --cert and --key", n)
		}
	}
	return nil
}

// checkProfileSecrets refuses a profile at path that holds a secret
// (secretKeys, set in fs by the profile) and that group or others may
// read.
func checkProfileSecrets(fs *pflag.FlagSet, path string) error {
	if path == "" || !slices.ContainsFunc(secretKeys, fs.Changed) {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return usagef("profile: %v", err)
	}
	if fi.Mode().Perm()&0o044 != 0 {
		return usagef("profile %s holds a secret and is readable by group or others (mode %#o): chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	return nil
}

// applyTOML sets fs's unchanged flags from the TOML document b, read from
// file.
func applyTOML(fs *pflag.FlagSet, cmdline map[string]bool, file string, b []byte) []error {
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
		if err := setFromTOML(fs, cmdline, key, doc[parts[0]], len(parts)); err != nil {
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
func setFromTOML(fs *pflag.FlagSet, cmdline map[string]bool, key string, v any, parts int) error {
	f := fs.Lookup(key)
	if parts > 1 || f == nil || slices.Contains(notInProfiles, key) {
		if alt := strings.ReplaceAll(key, "_", "-"); alt != key && fs.Lookup(alt) != nil {
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

// tomlStrings turns a TOML value into the strings pflag parses, checking
// its type against the flag's.
func tomlStrings(f *pflag.Flag, v any) ([]string, error) {
	typ := f.Value.Type()
	list := strings.HasSuffix(typ, "Array") || strings.HasSuffix(typ, "Slice")
	var items []any
	switch v := v.(type) {
	case []any:
		if !list {
			return nil, fmt.Errorf("want %s, not a list", typeWord(typ))
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
				return nil, fmt.Errorf("want %s, not a string (write it without quotes)", typeWord(typ))
			}
			out = append(out, it)
		case bool:
			if typ != "bool" {
				return nil, fmt.Errorf("want %s, not a boolean", typeWord(typ))
			}
			out = append(out, strconv.FormatBool(it))
		case int64:
			if typ != "int" {
				return nil, fmt.Errorf("want %s, not a number", typeWord(typ))
			}
			out = append(out, strconv.FormatInt(it, 10))
		default:
			return nil, fmt.Errorf("want %s", typeWord(typ))
		}
	}
	return out, nil
}

// typeWord names a pflag type for an error line.
func typeWord(typ string) string {
	switch typ {
	case "bool":
		return "true or false"
	case "int":
		return "a number"
	case "duration":
		return `a duration in quotes ("10s")`
	case "stringArray", "stringSlice":
		return "a string or a list of strings"
	}
	return "a string"
}

// setFlag sets f to vals, replacing a list flag's default, and marks it
// changed.
func setFlag(f *pflag.Flag, vals []string) error {
	var err error
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		err = sv.Replace(vals)
	} else {
		err = f.Value.Set(vals[0])
	}
	if err != nil {
		return fmt.Errorf("%s: %v", f.Name, err)
	}
	f.Changed = true
	return nil
}

// applyEnv sets the flags the command line did not set from MASQUE_
// variables in environ (lists comma-separated). Variables that name no
// flag are left alone: the shell may hold others of ours.
func applyEnv(fs *pflag.FlagSet, cmdline map[string]bool, environ []string) []error {
	var errs []error
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, envPrefix) {
			continue
		}
		name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, envPrefix), "_", "-"))
		f := fs.Lookup(name)
		if f == nil || cmdline[name] || slices.Contains(notInProfiles, name) {
			continue
		}
		vals := []string{v}
		if _, ok := f.Value.(pflag.SliceValue); ok {
			vals = strings.Split(v, ",")
		}
		if err := setFlag(f, vals); err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", k, err))
		}
	}
	return errs
}

// profileFlags are the flags that choose a profile.
type profileFlags struct {
	config    string // --config FILE
	configDir string // --config-dir DIR, where NAME.conf live
}

// addFlags adds --config-dir and, with config, --config to f.
func (pf *profileFlags) addFlags(f *pflag.FlagSet, config bool) {
	if config {
		f.StringVar(&pf.config, "config", "", "read the profile from FILE (its name without extension names the instance)")
	}
	dir := defaultConfigDir
	if d := os.Getenv(envPrefix + "CONFIG_DIR"); d != "" {
		dir = d
	}
	f.StringVar(&pf.configDir, "config-dir", dir, "directory of the profiles, NAME.conf (env MASQUE_CONFIG_DIR)")
}

// resolve returns the instance a command is about and its profile
// file ("" when it has none): NAME (args[0], read from DIR/NAME.conf),
// --config FILE (the instance is FILE's name without its extension), or
// neither (the default instance, with DIR/default.conf if there is one).
func (pf *profileFlags) resolve(args []string, needFile bool) (name, path string, err error) {
	switch {
	case len(args) > 0 && pf.config != "":
		return "", "", usagef("give a profile NAME or --config FILE, not both")
	case len(args) > 0:
		name = args[0]
		if err := checkInstanceName(name); err != nil {
			return "", "", err
		}
		path = profilePath(pf.configDir, name)
		if _, err := os.Stat(path); err != nil {
			if !needFile && errors.Is(err, os.ErrNotExist) {
				return name, "", nil
			}
			if errors.Is(err, os.ErrNotExist) {
				return "", "", usagef("profile %s: %s does not exist (masque list shows the profiles)", name, path)
			}
			return "", "", usagef("profile %s: %v", name, err)
		}
		return name, path, nil
	case pf.config != "":
		base := filepath.Base(pf.config)
		name = strings.TrimSuffix(base, filepath.Ext(base))
		if !instanceName.MatchString(name) {
			return "", "", usagef("--config %s: the file's name (%q, without its extension) names the instance: want 1-32 of a-z, 0-9, - and _", pf.config, name)
		}
		return name, pf.config, nil
	}
	path = profilePath(pf.configDir, defaultInstance)
	if _, err := os.Stat(path); err != nil || !needFile {
		path = ""
	}
	return defaultInstance, path, nil
}

// checkProfileTrust refuses, for a root run, a profile that someone other
// than root could have written: it chooses files, directories and
// servers for a root process.
func checkProfileTrust(path string) error {
	if path == "" || os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return usagef("profile: %v", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
		return usagef("profile %s: owned by uid %d, not root: chown root %s", path, st.Uid, path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return usagef("profile %s: writable by group or others (mode %#o): chmod go-w %s", path, fi.Mode().Perm(), path)
	}
	return nil
}

// instanceStateDir is the state directory of instance name.
func instanceStateDir(name string) string { return filepath.Join(defaultStateDir, name) }

// instanceTun is the default TUN name of instance name: masque0 for the
// default instance (as before instances), masque-NAME for the others,
// cut to the kernel's 15 bytes.
func instanceTun(name string) string {
	if name == defaultInstance {
		return defaultTun
	}
	t := "masque-" + name
	return t[:min(len(t), 15)]
}

// instanceDirs resolves the instance that masque down or status (cmd)
// is about and, unless cmd's own flags set them, its state directory and
// TUN name (profileDirs).
func instanceDirs(cmd *cobra.Command, pf *profileFlags, args []string, stateDir, tunName *string) (string, error) {
	name, path, err := pf.resolve(args, false)
	if err != nil {
		return "", err
	}
	sd, tn, err := profileDirs(name, path)
	if err != nil {
		return "", err
	}
	if !cmd.Flags().Changed("state-dir") {
		*stateDir = sd
	}
	if abs, err := filepath.Abs(*stateDir); err == nil {
		*stateDir = abs // as the instance registry has it
	}
	if tunName != nil && !cmd.Flags().Changed("tun") {
		*tunName = tn
	}
	return name, nil
}

// profileDirs returns the state directory and TUN name of instance name
// as its profile at path ("": none) sets them, else the instance's
// defaults. Only the profile's own keys count, not the environment's,
// which belongs to this shell.
func profileDirs(name, path string) (stateDir, tunName string, err error) {
	stateDir, tunName = instanceStateDir(name), instanceTun(name)
	if path == "" {
		return stateDir, tunName, nil
	}
	uf := newUpCmd().Flags()
	if err := applyProfile(uf, path, nil); err != nil {
		return "", "", err
	}
	if uf.Changed("state-dir") {
		stateDir, _ = uf.GetString("state-dir")
	}
	if uf.Changed("tun") {
		tunName, _ = uf.GetString("tun")
	}
	return stateDir, tunName, nil
}
