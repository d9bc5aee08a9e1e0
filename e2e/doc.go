// Package e2e holds the end-to-end tests of masque. They build masqued, masque
// and four helper programs (internal/nettool, internal/spoofclient,
// internal/connectload, internal/h3attack) once, then drive each test in its
// own set of network namespaces:
//
//	client (198.18.1.1) ── veth ── server (198.18.1.2, 198.18.2.1) ── veth ── target (198.18.2.2)
//
// The target has no route back to the client subnet, so only traffic that the
// server tunnels and NATs gets answered. Every test checks afterwards that its
// namespaces hold no TUN link, rule, route or nftables table that was not
// there before, and that the namespaces themselves are gone.
//
// The tests need root (namespaces, TUN, nftables) and skip otherwise.
package e2e
