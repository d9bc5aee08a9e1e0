package policy

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	tokA = "aaaaaaaaaaaaaaaaaaaa"
	tokB = "bbbbbbbbbbbbbbbbbbbb"
	tokC = "cccccccccccccccc" // exactly 16
)

func TestParseTokens(t *testing.T) {
	long := strings.Repeat("x", maxTokenLen)
	tests := []struct {
		name    string
		in      string
		want    map[string]Identity // token -> identity
		wantErr []string            // substrings, all must appear
	}{
		{name: "empty", in: "", want: map[string]Identity{}},
		{name: "comments and blanks", in: "# c\n\n   \n\t# indented comment\n", want: map[string]Identity{}},
		{
			name: "several",
			in:   "alice " + tokA + "\n  bob\t" + tokB + "  \r\nalice " + tokC,
			want: map[string]Identity{tokA: "alice", tokB: "bob", tokC: "alice"},
		},
		{name: "identity charset", in: "a.B_c@d-9 " + tokA, want: map[string]Identity{tokA: "a.B_c@d-9"}},
		{name: "max lengths", in: strings.Repeat("i", 64) + " " + long, want: map[string]Identity{long: Identity(strings.Repeat("i", 64))}},
		{name: "one field", in: "alice\n", wantErr: []string{"line 1: want IDENTITY TOKEN"}},
		{name: "three fields", in: "\n\nalice " + tokA + " extra\n", wantErr: []string{"line 3: want IDENTITY TOKEN"}},
		{name: "token with space", in: "alice aaaaaaaa aaaaaaaa", wantErr: []string{"line 1: want IDENTITY TOKEN"}},
		{name: "short token", in: "alice short", wantErr: []string{"line 1: invalid token"}},
		{name: "long token", in: "alice " + long + "x", wantErr: []string{"line 1: invalid token"}},
		{name: "non-ASCII token", in: "alice aaaaaaaaaaaaaaaaaaaé", wantErr: []string{"line 1: invalid token"}},
		{name: "control in token", in: "alice aaaaaaaa\x01aaaaaaaaaa", wantErr: []string{"line 1: invalid token"}},
		{name: "bad identity char", in: "al/ice " + tokA, wantErr: []string{"line 1: invalid identity"}},
		{name: "long identity", in: strings.Repeat("i", 65) + " " + tokA, wantErr: []string{"line 1: invalid identity"}},
		{
			name:    "duplicate token",
			in:      "alice " + tokA + "\nbob " + tokA,
			wantErr: []string{"line 2: duplicate token (first on line 1)"},
		},
		{
			name: "all bad lines reported",
			in:   "# header\nalice\nbob " + tokA + "\nb!d x\nok " + tokB + "\ncarol " + tokA,
			wantErr: []string{
				"line 2: want IDENTITY TOKEN",
				"line 4: invalid identity",
				"line 4: invalid token",
				"line 6: duplicate token (first on line 3)",
			},
		},
		{name: "line too long", in: "alice " + tokA + "\n# " + strings.Repeat("x", maxLineLen), wantErr: []string{"line 2: longer than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTokens(strings.NewReader(tt.in))
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("ParseTokens(%q) = nil error, want %q", tt.in, tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("ParseTokens(%q) = %q, want it to contain %q", tt.in, err, w)
					}
				}
				if n := strings.Count(err.Error(), "line "); n < len(tt.wantErr) {
					t.Errorf("ParseTokens(%q) reported %d lines, want %d", tt.in, n, len(tt.wantErr))
				}
				assertNoSecret(t, err, tokA, tokB, tokC, long)
				return
			}
			if err != nil {
				t.Fatalf("ParseTokens(%q) = %v", tt.in, err)
			}
			if got.Len() != len(tt.want) {
				t.Errorf("Len() = %d, want %d", got.Len(), len(tt.want))
			}
			gotIDs := map[string]Identity{}
			for tok := range tt.want {
				if id, ok := got.Lookup(tok); ok {
					gotIDs[tok] = id
				}
			}
			if d := cmp.Diff(tt.want, gotIDs); d != "" {
				t.Errorf("lookups (-want +got):\n%s", d)
			}
		})
	}
}

func assertNoSecret(t *testing.T, err error, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q contains a token", err)
		}
	}
}

func TestTokensLookup(t *testing.T) {
	toks, err := ParseTokens(strings.NewReader("alice " + tokA + "\nbob " + tokB + "\nalice " + tokC + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		token  string
		want   Identity
		wantOK bool
	}{
		{tokA, "alice", true},
		{tokB, "bob", true},
		{tokC, "alice", true},
		{"", "", false},
		{tokA[:len(tokA)-1], "", false},        // prefix
		{tokA + "a", "", false},                // extension
		{strings.ToUpper(tokA), "", false},     // case matters
		{tokA + "\n", "", false},               // no trimming at lookup
		{strings.Repeat("z", 5000), "", false}, // long
	}
	for _, tt := range tests {
		t.Run(tt.token, func(t *testing.T) {
			got, ok := toks.Lookup(tt.token)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Lookup(%q) = %q, %v, want %q, %v", tt.token, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestTokensNil(t *testing.T) {
	var toks *Tokens
	if n := toks.Len(); n != 0 {
		t.Errorf("nil Len() = %d, want 0", n)
	}
	if id, ok := toks.Lookup(tokA); ok {
		t.Errorf("nil Lookup = %q, true, want false", id)
	}
}

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(good, []byte("alice "+tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("alice\nbob "+tokA+"\ncarol\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")

	toks, err := LoadTokens(good)
	if err != nil {
		t.Fatalf("LoadTokens(good) = %v", err)
	}
	if id, ok := toks.Lookup(tokA); !ok || id != "alice" {
		t.Errorf("Lookup = %q, %v, want alice, true", id, ok)
	}

	tests := []struct {
		name    string
		path    string
		wantErr []string
		is      error
	}{
		{"parse error", bad, []string{"tokens file " + bad + ": line 1: want IDENTITY TOKEN", "line 3: want IDENTITY TOKEN"}, nil},
		{"missing", missing, []string{"tokens file " + missing + ": open: "}, fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadTokens(tt.path)
			if err == nil {
				t.Fatalf("LoadTokens(%q) = nil error", tt.path)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("LoadTokens(%q) = %q, want it to contain %q", tt.path, err, w)
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("LoadTokens(%q) = %v, want errors.Is %v", tt.path, err, tt.is)
			}
			if strings.Count(err.Error(), tt.path) != 1 {
				t.Errorf("LoadTokens(%q) = %q, want the path exactly once", tt.path, err)
			}
		})
	}
}

// FuzzParseTokens checks that a successful parse maps every token line to
// its identity and that errors never contain a token-like field.
func FuzzParseTokens(f *testing.F) {
	f.Add("alice " + tokA + "\nbob " + tokB + "\n")
	f.Add("# comment\n\n  alice\t" + tokA + "  \r\nalice " + tokC)
	f.Add("alice " + tokA + "\nbob " + tokA)
	f.Add("alice\n")
	f.Add("a@b.c-d_e !\"#$%&'()*+,-./:;<=>?@[]^_`{|}~")
	f.Fuzz(func(t *testing.T, in string) {
		toks, err := ParseTokens(strings.NewReader(in))
		if err != nil {
			if toks != nil {
				t.Fatalf("ParseTokens returned tokens and error %v", err)
			}
			// No word of the message is long enough to be a token.
			for _, w := range strings.Fields(err.Error()) {
				if len(w) >= minTokenLen {
					t.Fatalf("error %q contains a token-sized word %q", err, w)
				}
			}
			return
		}
		n := 0
		for _, line := range strings.Split(in, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' {
				continue
			}
			f := strings.Fields(line)
			if len(f) != 2 {
				t.Fatalf("parsed line %q without two fields", line)
			}
			n++
			if id, ok := toks.Lookup(f[1]); !ok || id != Identity(f[0]) {
				t.Fatalf("Lookup(%q) = %q, %v, want %q, true", f[1], id, ok, f[0])
			}
		}
		if toks.Len() != n {
			t.Fatalf("Len() = %d, want %d", toks.Len(), n)
		}
	})
}

// TestTokensReplace: a reload swaps the whole set at once; lookups running
// meanwhile see the old set or the new one, never a mix or a crash.
func TestTokensReplace(t *testing.T) {
	const (
		aliceTok = "alice-token-0123456789"
		carolTok = "carol-token-0123456789"
	)
	toks, err := ParseTokens(strings.NewReader("alice " + aliceTok + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	next, err := ParseTokens(strings.NewReader("carol " + carolTok + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10000 {
			a, okA := toks.Lookup(aliceTok)
			c, okC := toks.Lookup(carolTok)
			if okA && a != "alice" || okC && c != "carol" {
				t.Errorf("lookup during a reload: %q %v, %q %v", a, okA, c, okC)
				return
			}
		}
	}()
	toks.Replace(next)
	<-done
	if _, ok := toks.Lookup(aliceTok); ok {
		t.Error("alice's token still accepted after the reload removed it")
	}
	if id, ok := toks.Lookup(carolTok); !ok || id != "carol" {
		t.Errorf("carol's token after the reload: %q, %v", id, ok)
	}
	if n := toks.Len(); n != 1 {
		t.Errorf("Len after the reload = %d, want 1", n)
	}
}
