package main

import (
	"errors"
	"testing"
)

func TestErrorKey(t *testing.T) {
	err := errors.New("quic: timeout: no recent network activity from 198.18.1.2:4433 after 10s")
	if got, want := errorKey(err), "quic: timeout: no recent network activity"; got != want {
		t.Errorf("errorKey(%q) = %q, want %q", err, got, want)
	}
}
