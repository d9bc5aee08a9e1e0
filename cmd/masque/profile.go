package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/masque-vpn/masque/cmd/internal/flagfile"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// A profile is a TOML file of top-level keys, each named after a flag of
// masque up (package flagfile reads it).

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

// applyProfile sets the flags of fs that the command line did not set
// from the profile at path (if path is not empty) and then from the
// environment (flagfile). It reports every problem at once.
func applyProfile(fs *pflag.FlagSet, path string, environ []string) error {
	if err := refuseProfileOnly(fs); err != nil {
		return err
	}
	err := flagfile.Apply(fs, path, flagfile.Options{EnvPrefix: envPrefix, Environ: environ, Reserved: notInProfiles})
	if _, ok := err.(flagfile.Errors); ok {
		return usageError{err} // each line names the file
	}
	if err != nil {
		return usageError{fmt.Errorf("profile %w", err)}
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
