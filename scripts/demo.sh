#!/usr/bin/env bash
# demo.sh: build masque, run a server and a client in three fresh network
# namespaces (scripts/netns.sh) and show that the tunnel carries IPv4 and
# IPv6 traffic to a target that is otherwise unreachable; then measure the
# same things over the plain routed path for comparison.
#
#   sudo scripts/demo.sh
#
# Everything it creates (namespaces, processes, temporary files) is removed
# on exit, error or Ctrl-C, by name and PID. It exits non-zero if the
# tunnel did not carry traffic.
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
	echo "demo.sh: must run as root: sudo scripts/demo.sh" >&2
	exit 1
fi
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
# shellcheck source=scripts/netns.sh
source "$REPO/scripts/netns.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# --- prerequisites --------------------------------------------------------
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ping >/dev/null || need+=(iputils-ping)
if ((${#need[@]})); then
	say "installing ${need[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
command -v go >/dev/null || { echo "demo.sh: go not found (expected in /usr/local/go/bin)" >&2; exit 1; }

# --- state and teardown ---------------------------------------------------
ID=mqd-$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
C=$ID-c S=$ID-s T=$ID-t
WORK=$(mktemp -d /tmp/masque-demo.XXXXXX)
PIDS=() # background processes we started, stopped in reverse order

stop_pid() { # stop_pid PID: SIGTERM, up to 5 s, then SIGKILL
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	netns_destroy "$ID"
	if ((rc != 0)) && [[ -d $WORK ]]; then
		for f in "$WORK"/*.log; do
			[[ -s $f ]] || continue
			echo "--- last lines of $(basename "$f")" >&2
			tail -n 15 "$f" >&2
		done
	fi
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for FILE PATTERN SECONDS PID: wait until FILE has a line matching
# PATTERN; fail if PID dies or time runs out.
wait_for() {
	local file=$1 pat=$2 secs=$3 pid=$4 i
	for ((i = 0; i < secs * 10; i++)); do
		grep -q -- "$pat" "$file" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { echo "demo.sh: process $pid exited; see $(basename "$file"):" >&2; tail -n 20 "$file" >&2; return 1; }
		sleep 0.1
	done
	echo "demo.sh: no '$pat' in $(basename "$file") within ${secs}s" >&2
	return 1
}

# ping_avg NS ADDR: prints "received avg_ms" for 10 pings 0.2 s apart.
ping_avg() {
	local out
	out=$(ip netns exec "$1" ping -n -c 10 -i 0.2 -W 1 -w 6 "$2" 2>&1 || true)
	local rx avg
	rx=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' <<<"$out")
	avg=$(sed -n 's|^rtt .* = [0-9.]*/\([0-9.]*\)/.*|\1|p' <<<"$out")
	echo "${rx:-0} ${avg:--}"
}

# iperf_gbps NS: 5 s of one TCP stream to the target; prints Gbit/s at the
# receiver, or "-" on failure.
iperf_gbps() {
	local out
	out=$(timeout 30 ip netns exec "$1" iperf3 -c 198.18.2.2 -t 5 -f g --connect-timeout 5000 2>&1 || true)
	awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Gbits/sec") print $(i-1) }' <<<"$out" | tail -n 1 | grep . || echo "-"
}

# --- build, topology, credentials -----------------------------------------
say "building masqued and masque"
go build -buildvcs=false -o "$WORK/masqued" ./cmd/masqued
go build -buildvcs=false -o "$WORK/masque" ./cmd/masque

say "creating namespaces $C (client), $S (server), $T (target)"
netns_create "$ID"

"$WORK/masqued" cert --dir "$WORK/pki" --host 198.18.1.2 >/dev/null
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
echo "demo $TOKEN" >"$WORK/tokens"
echo "$TOKEN" >"$WORK/demo.token"
chmod 600 "$WORK/tokens" "$WORK/demo.token"

say "without the tunnel, the target does not answer the client (it has no route back)"
if ip netns exec "$C" ping -n -c 2 -i 0.2 -W 1 198.18.2.2; then
	echo "demo.sh: the target answered without the tunnel: the topology is wrong" >&2
	exit 1
fi

# --- tunnel ---------------------------------------------------------------
say "starting masqued in $S"
ip netns exec "$S" "$WORK/masqued" run --listen 198.18.1.2:4433 \
	--cert "$WORK/pki/server.crt" --key "$WORK/pki/server.key" \
	--tokens "$WORK/tokens" --egress "$NETNS_EGRESS" --state-dir "$WORK/server-state" \
	--metrics 127.0.0.1:9090 2>"$WORK/masqued.log" &
PIDS+=($!)
wait_for "$WORK/masqued.log" "msg=listening" 15 "${PIDS[-1]}"
grep -m1 "msg=listening" "$WORK/masqued.log"

say "starting masque up in $C"
ip netns exec "$C" "$WORK/masque" up --server 198.18.1.2:4433 --ca "$WORK/pki/ca.crt" \
	--token-file "$WORK/demo.token" --state-dir "$WORK/client-state" \
	>"$WORK/masque.out" 2>"$WORK/masque.log" &
CLIENT_PID=$!
PIDS+=("$CLIENT_PID")
wait_for "$WORK/masque.out" "^up: " 20 "$CLIENT_PID"
cat "$WORK/masque.out"

ip netns exec "$T" iperf3 -s -B 198.18.2.2 >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=($!)
sleep 0.5

say "through the tunnel: ping IPv4 and IPv6, iperf3 5 s client -> target"
read -r T4_RX T4_AVG < <(ping_avg "$C" 198.18.2.2)
read -r T6_RX T6_AVG < <(ping_avg "$C" 2001:db8:2::2)
echo "ping 198.18.2.2:    $T4_RX/10 answered, avg $T4_AVG ms"
echo "ping 2001:db8:2::2: $T6_RX/10 answered, avg $T6_AVG ms"
T_GBPS=$(iperf_gbps "$C")
echo "iperf3: $T_GBPS Gbit/s"

say "masque status"
ip netns exec "$C" "$WORK/masque" status --state-dir "$WORK/client-state" || echo "(masque status failed)"

say "stopping the client"
stop_pid "$CLIENT_PID"
cat "$WORK/masque.log"

# --- plain routed path ----------------------------------------------------
say "baseline: the same measurements over the plain routed path (no tunnel, no NAT)"
echo "the target gets a temporary route back to 198.18.1.0/24 and 2001:db8:1::/64 via the server"
ip -n "$T" route add 198.18.1.0/24 via 198.18.2.1
ip -n "$T" -6 route add 2001:db8:1::/64 via 2001:db8:2::1
read -r P4_RX P4_AVG < <(ping_avg "$C" 198.18.2.2)
read -r P6_RX P6_AVG < <(ping_avg "$C" 2001:db8:2::2)
echo "ping 198.18.2.2:    $P4_RX/10 answered, avg $P4_AVG ms"
echo "ping 2001:db8:2::2: $P6_RX/10 answered, avg $P6_AVG ms"
P_GBPS=$(iperf_gbps "$C")
echo "iperf3: $P_GBPS Gbit/s"
ip -n "$T" route del 198.18.1.0/24 via 198.18.2.1
ip -n "$T" -6 route del 2001:db8:1::/64 via 2001:db8:2::1

# --- summary --------------------------------------------------------------
say "summary (client $C -> target 198.18.2.2 / 2001:db8:2::2, one TCP stream, 5 s)"
printf '%-28s %14s %14s %12s\n' "path" "IPv4 ping ms" "IPv6 ping ms" "TCP Gbit/s"
printf '%-28s %14s %14s %12s\n' "MASQUE tunnel (CONNECT-IP)" "$T4_AVG" "$T6_AVG" "$T_GBPS"
printf '%-28s %14s %14s %12s\n' "plain routed (baseline)" "$P4_AVG" "$P6_AVG" "$P_GBPS"
echo "ping: average of 10; answered: tunnel $T4_RX+$T6_RX/20, plain $P4_RX+$P6_RX/20"

if [[ $T4_RX -eq 0 || $T6_RX -eq 0 || $T_GBPS == "-" ]]; then
	echo "demo.sh: FAIL: the tunnel did not carry traffic" >&2
	exit 1
fi
echo "demo.sh: OK"
