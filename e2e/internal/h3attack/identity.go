package main

// identity: requests whose identity is ambiguous. Each must be refused,
// not resolved in the attacker's favour by whichever credential the
// server happens to look at first.

import (
	"context"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/quic-go/qpack"
)

type identity struct {
	name string
}

func identityFlags(fs *flag.FlagSet) *identity {
	i := &identity{}
	fs.StringVar(&i.name, "case", "", "dup-auth-bad-good, dup-auth-good-bad, cert-b-token-a (with -cert and -key) or evil-authority")
	return i
}

// identityReport is the output line.
type identityReport struct {
	Event  string `json:"event"` // "done"
	Case   string `json:"case"`
	Status int    `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
	closeInfo
}

func (i *identity) run(ctx context.Context, d *dialer, c common) error {
	good, err := readToken(c.tokenFile)
	if err != nil {
		return err
	}
	wrong, err := readToken(c.wrongFile)
	if err != nil {
		return err
	}
	var fields []qpack.HeaderField
	switch i.name {
	case "dup-auth-bad-good":
		fields = connectIPFields(d.authority, "Bearer "+wrong, "Bearer "+good)
	case "dup-auth-good-bad":
		fields = connectIPFields(d.authority, "Bearer "+good, "Bearer "+wrong)
	case "cert-b-token-a":
		if len(d.tlsConf.Certificates) == 0 {
			return fmt.Errorf("case %s needs -cert and -key", i.name)
		}
		fields = connectIPFields(d.authority, "Bearer "+good)
	case "evil-authority":
		_, port, err := net.SplitHostPort(d.authority)
		if err != nil {
			return err
		}
		fields = connectIPFields(net.JoinHostPort("evil.example", port), "Bearer "+good)
	default:
		return fmt.Errorf("unknown case %q", i.name)
	}
	if good == "" || strings.HasPrefix(i.name, "dup-auth") && wrong == "" {
		return fmt.Errorf("case %s needs -token-file and -wrong-token-file", i.name)
	}
	h, err := d.openH3(ctx, quicConfig(true), defaultSettings)
	if err != nil {
		return err
	}
	defer h.close()
	rep := identityReport{Event: "done", Case: i.name}
	rq, err := h.open(ctx, appendFrame(nil, frameHeaders, encodeFields(fields)))
	if err == nil {
		rep.Status, err = rq.response(5 * time.Second)
		rq.reset()
	}
	if err != nil {
		rep.Error = err.Error()
		rep.closeInfo = describe(err)
	}
	emit(rep)
	return nil
}
