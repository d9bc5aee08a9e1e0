package policy

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync/atomic"
)

const (
	minTokenLen = 16
	maxTokenLen = 512
	// maxLineLen bounds one line of a tokens file; longer lines are errors.
	maxLineLen = 64 * 1024
)

// Tokens maps bearer tokens to identities. Only SHA-256 digests of the
// tokens are kept. A nil *Tokens holds no tokens. Tokens is immutable after
// parsing and safe for concurrent use.
type Tokens struct {
	// entries is swapped whole by Replace (SIGHUP reload), so that a
	// Lookup sees either the old set or the new one.
	entries atomic.Pointer[[]tokenEntry]
}

type tokenEntry struct {
	digest [sha256.Size]byte
	id     Identity
}

// ParseTokens parses a tokens file: one "IDENTITY TOKEN" pair per line,
// separated by white space. Blank lines and lines starting with '#' are
// ignored and surrounding white space is trimmed. An identity is 1-64
// characters of [A-Za-z0-9._@-]; a token is 16-512 visible ASCII characters.
// One identity may have several tokens, but a token may appear only once.
//
// ParseTokens reports every bad line at once, each error naming its line
// number. Errors never contain a token.
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	var entries []tokenEntry
	firstLine := make(map[[sha256.Size]byte]int) // digest -> line it first appeared on
	var errs []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxLineLen)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			errs = append(errs, fmt.Errorf("line %d: want IDENTITY TOKEN", n))
			continue
		}
		id, tok := f[0], f[1]
		var bad bool
		if !validIdentity(id) {
			errs = append(errs, fmt.Errorf("line %d: invalid identity: want 1-64 characters of A-Z a-z 0-9 . _ @ -", n))
			bad = true
		}
		if !validToken(tok) {
			errs = append(errs, fmt.Errorf("line %d: invalid token: want %d-%d visible ASCII characters", n, minTokenLen, maxTokenLen))
			bad = true
		}
		if bad {
			continue
		}
		d := sha256.Sum256([]byte(tok))
		if first, ok := firstLine[d]; ok {
			errs = append(errs, fmt.Errorf("line %d: duplicate token (first on line %d)", n, first))
			continue
		}
		firstLine[d] = n
		entries = append(entries, tokenEntry{digest: d, id: Identity(id)})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("line %d: longer than %d bytes", n+1, maxLineLen)
		}
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	t.entries.Store(&entries)
	return t, nil
}

// LoadTokens reads and parses the tokens file at path; see [ParseTokens].
// Errors are prefixed with "tokens file PATH: ".
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		// The prefix already names the path; don't repeat it.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = fmt.Errorf("%s: %w", pe.Op, pe.Err)
		}
		return nil, fmt.Errorf("tokens file %s: %w", path, err)
	}
	defer f.Close()
	t, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("tokens file %s: %w", path, err)
	}
	return t, nil
}

// Len returns the number of tokens.
func (t *Tokens) Len() int {
	return len(t.load())
}

func (t *Tokens) load() []tokenEntry {
	if t == nil {
		return nil
	}
	if e := t.entries.Load(); e != nil {
		return *e
	}
	return nil
}

// Replace makes t accept exactly the tokens of other from now on (a
// reload); lookups in flight finish against the old set. Sessions
// authenticated before are not affected.
func (t *Tokens) Replace(other *Tokens) {
	e := other.load()
	t.entries.Store(&e)
}

// Lookup returns the identity that token belongs to. It compares the
// SHA-256 digest of token with the digest of every stored token in constant
// time, so neither the position of a match nor the length of any stored
// token leaks through timing.
func (t *Tokens) Lookup(token string) (Identity, bool) {
	entries := t.load()
	if len(entries) == 0 {
		return "", false
	}
	d := sha256.Sum256([]byte(token))
	idx, found := 0, 0
	for i := range entries {
		eq := subtle.ConstantTimeCompare(d[:], entries[i].digest[:])
		idx = subtle.ConstantTimeSelect(eq, i, idx)
		found |= eq
	}
	if found == 0 {
		return "", false
	}
	return entries[idx].id, true
}

// validToken reports whether s is 16-512 visible ASCII characters.
func validToken(s string) bool {
	if len(s) < minTokenLen || len(s) > maxTokenLen {
		return false
	}
	return visibleASCII(s)
}

// visibleASCII reports whether every byte of s is in '!'..'~'.
func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}
