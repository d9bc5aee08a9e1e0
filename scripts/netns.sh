#!/usr/bin/env bash
# netns.sh: the masque test topology, three network namespaces in a line:
#
#   ID-c  client  198.18.1.1/24  2001:db8:1::1/64   default via the server
#     │ c0 ── s0
#   ID-s  server  198.18.1.2/24  2001:db8:1::2/64   forwarding on
#     │ s1 ── t0  198.18.2.1/24  2001:db8:2::1/64   (egress, pass "--egress s1")
#   ID-t  target  198.18.2.2/24  2001:db8:2::2/64   NO route back to the client
#
# The target answers only what the server NATs, i.e. tunnelled traffic.
# Addresses are from 198.18.0.0/15 (RFC 2544) and 2001:db8::/32 (RFC 3849)
# only, and only inside these namespaces: the root namespace is not touched.
#
# Source it (functions netns_create ID / netns_destroy ID) or run it:
#   scripts/netns.sh up ID      create ID-c, ID-s, ID-t
#   scripts/netns.sh down ID    delete them (by name)

NETNS_EGRESS=s1

# netns_create ID creates the three namespaces and wires them. On error it
# returns non-zero; the caller's cleanup should call netns_destroy ID.
netns_create() {
	local id=$1 c=$1-c s=$1-s t=$1-t ns
	for ns in "$c" "$s" "$t"; do
		ip netns add "$ns" || return 1
	done
	for ns in "$c" "$s" "$t"; do
		# No DAD: addresses are usable at once (set before the veths exist).
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 || return 1
		ip -n "$ns" link set lo up || return 1
	done
	ip netns exec "$s" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 || return 1
	ip netns exec "$t" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 || return 1

	ip -n "$c" link add c0 type veth peer name s0 netns "$s" || return 1
	ip -n "$s" link add "$NETNS_EGRESS" type veth peer name t0 netns "$t" || return 1

	ip -n "$c" addr add 198.18.1.1/24 dev c0 &&
		ip -n "$c" addr add 2001:db8:1::1/64 dev c0 nodad &&
		ip -n "$s" addr add 198.18.1.2/24 dev s0 &&
		ip -n "$s" addr add 2001:db8:1::2/64 dev s0 nodad &&
		ip -n "$s" addr add 198.18.2.1/24 dev "$NETNS_EGRESS" &&
		ip -n "$s" addr add 2001:db8:2::1/64 dev "$NETNS_EGRESS" nodad &&
		ip -n "$t" addr add 198.18.2.2/24 dev t0 &&
		ip -n "$t" addr add 2001:db8:2::2/64 dev t0 nodad || return 1

	ip -n "$c" link set c0 up &&
		ip -n "$s" link set s0 up &&
		ip -n "$s" link set "$NETNS_EGRESS" up &&
		ip -n "$t" link set t0 up || return 1

	ip -n "$c" route add default via 198.18.1.2 &&
		ip -n "$c" -6 route add default via 2001:db8:1::2 || return 1
	# The target deliberately gets no route to 198.18.1.0/24 or 2001:db8:1::/64.
}

# netns_destroy ID deletes the namespaces of ID that exist (veths go with them).
netns_destroy() {
	local id=$1 ns
	for ns in "$id-c" "$id-s" "$id-t"; do
		if ip netns list | awk '{print $1}' | grep -qx -- "$ns"; then
			ip netns del "$ns" || echo "netns.sh: could not delete $ns" >&2
		fi
	done
}

# When run rather than sourced: "up ID" / "down ID".
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	set -euo pipefail
	case "${1:-}" in
	up)
		[[ -n "${2:-}" ]] || { echo "usage: $0 up|down ID" >&2; exit 2; }
		netns_create "$2" || { netns_destroy "$2"; echo "netns.sh: set-up of $2 failed" >&2; exit 1; }
		echo "created $2-c $2-s $2-t (server egress interface: $NETNS_EGRESS)"
		;;
	down)
		[[ -n "${2:-}" ]] || { echo "usage: $0 up|down ID" >&2; exit 2; }
		netns_destroy "$2"
		;;
	*)
		echo "usage: $0 up|down ID" >&2
		exit 2
		;;
	esac
fi
