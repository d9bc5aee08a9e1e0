package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
)

// DefaultNATTable is the inet nftables table of the server's
// masquerading (masqued's).
const DefaultNATTable = "masqued"

// maxTableNameLen is nftables' NFT_NAME_MAXLEN minus the terminating NUL.
const maxTableNameLen = 255

// natChain is the name of the postrouting chain in a NAT table.
const natChain = "postrouting"

// nftTable is an inet nftables table this process created. It lives in
// the network namespace of the thread that created it, and close deletes
// it there, whatever thread calls close.
type nftTable struct {
	table string
	nsFD  int // the namespace's fd, or -1

	closeOnce sync.Once
	closeErr  error
}

// Table returns the name of the inet table.
func (t *nftTable) Table() string { return t.table }

// NAT is a server's source NAT: an nftables table of its own, of family
// inet, that masquerades the tunnel clients' packets as they leave the
// host. Close deletes it in the namespace it was created in.
type NAT struct{ nftTable }

func validateNAT(table, egress, tunName string, sources []netip.Prefix) error {
	var errs []error
	if err := validateTableName(table); err != nil {
		errs = append(errs, fmt.Errorf("table: %w", err))
	}
	if egress != "" {
		if err := validateLinkName(egress, false); err != nil {
			errs = append(errs, fmt.Errorf("egress: %w", err))
		}
	} else if err := validateLinkName(tunName, false); err != nil {
		errs = append(errs, fmt.Errorf("tun (needed without egress): %w", err))
	}
	if len(sources) == 0 {
		errs = append(errs, errors.New("sources: none"))
	}
	errs = append(errs, validatePrefixes("sources", sources)...)
	return errors.Join(errs...)
}

// prefixMask returns a network mask of bits ones in n bytes.
func prefixMask(bits, n int) []byte {
	m := make([]byte, n)
	for i := range m {
		switch {
		case bits >= 8:
			m[i] = 0xff
			bits -= 8
		case bits > 0:
			m[i] = ^byte(0xff >> bits)
			bits = 0
		}
	}
	return m
}

func validateTableName(t string) error {
	switch {
	case t == "":
		return errors.New("empty table name")
	case len(t) > maxTableNameLen:
		return fmt.Errorf("table name longer than %d bytes", maxTableNameLen)
	case strings.ContainsRune(t, 0):
		return errors.New("table name contains NUL")
	}
	return nil
}
