#!/usr/bin/env bash
# bench.sh: measure masque against the plain routed path and wireguard-go,
# side by side in one run, on the namespace topology of scripts/netns.sh:
#
#   client ID-c 198.18.1.1 ── server ID-s 198.18.1.2 / 198.18.2.1 ── target ID-t 198.18.2.2
#
# Paths, each client → target through the server namespace (one hop):
#   plain   routed, no tunnel: the target gets a temporary route back to the
#           client subnet via the server.
#   wg      wireguard-go (built from the Go module proxy in a throwaway module)
#           in the client and server namespaces, MTU 1420; the server
#           forwards and masquerades to the target (an nft table of its own).
#   masque  masqued in the server namespace, masque up in the client (as
#           scripts/demo.sh does); masqued masquerades to the target.
#
# For each path: iperf3 TCP 1 and 4 streams, both directions; UDP 1200-byte
# datagrams at 500 Mbit/s and unlimited, both directions (goodput at the
# receiver, loss); ping RTT idle (20 pings 0.05 s apart) and during the
# one-stream upload; CPU of each tunnel process (utime+stime from
# /proc/PID/stat) and of the whole machine (/proc/stat) over each test.
# It prints the medians over --runs and the ratios masque/plain and
# masque/wireguard-go.
#
#   sudo scripts/bench.sh [--quick] [--duration S] [--runs N] [--paths plain,wg,masque]
#                         [--scale] [--profile] [--out FILE] [--keep]
#
# --scale adds the server-scaling figures of issue 5 (masque only, one run):
# aggregate throughput with 1, 8 and 32 masque clients at once (a namespace
# and a masque up each), masqued memory per session, sessions set up per
# second and RSS with 1,000 idle sessions (both with the load tool
# e2e/internal/connectload).
#
# --profile takes CPU profiles of masqued and masque up (their pprof
# endpoints) during masque's one-stream TCP tests of the last run and prints
# the top functions of each (go tool pprof -top); the profiles stay in the
# work directory with --keep.
#
# Time: about 5 minutes per run with 10 s tests (2 minutes with --quick),
# plus 2 minutes for --scale. On a small machine the iperf3 ends and the
# tunnel share the CPUs: read the CPU table beside the throughput.
#
# Installs what it lacks (apt: iperf3, iproute2, nftables, iputils-ping,
# wireguard-tools, jq). Addresses: 198.18.0.0/15, 2001:db8::/32 and loopback,
# only inside the namespaces it creates. Everything it creates (namespaces,
# processes, sockets, temporary files) is removed on exit, error or Ctrl-C,
# by name and PID. Every iperf3 and ping is bounded by a timeout.
set -euo pipefail

usage() {
	sed -n '/^#   sudo/,/^#  *\[--scale/p' "$0" | sed 's/^# \{0,1\}//'
	echo "  --duration S  seconds per iperf3 test (default 10); --quick is --duration 3"
	echo "  --runs N      repeat everything N times and report medians (default 1)"
	echo "  --paths LIST  comma-separated subset of plain,wg,masque (default all; none: only --scale)"
	echo "  --scale       also measure server scaling (masque only)"
	echo "  --profile     CPU-profile masqued and masque up during masque's TCP 1-stream tests"
	echo "  --out FILE    also write every raw measurement as TSV (run path metric value)"
	echo "  --keep        keep the work directory (logs, iperf3 JSON) and print its name"
}

DUR=10 RUNS=1 PATHS=plain,wg,masque SCALE=0 PROFILE=0 OUT= KEEP=0
while (($#)); do
	case $1 in
	--quick) DUR=3 ;;
	--duration) DUR=${2:?--duration needs seconds}; shift ;;
	--duration=*) DUR=${1#*=} ;;
	--runs) RUNS=${2:?--runs needs a count}; shift ;;
	--runs=*) RUNS=${1#*=} ;;
	--paths) PATHS=${2:?--paths needs a list}; shift ;;
	--paths=*) PATHS=${1#*=} ;;
	--scale) SCALE=1 ;;
	--profile) PROFILE=1 ;;
	--keep) KEEP=1 ;;
	--out) OUT=${2:?--out needs a file}; shift ;;
	--out=*) OUT=${1#*=} ;;
	-h | --help) usage; exit 0 ;;
	*) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
[[ $DUR =~ ^[0-9]+$ ]] && ((DUR >= 2 && DUR <= 300)) || { echo "bench.sh: --duration must be 2..300 seconds" >&2; exit 2; }
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1 && RUNS <= 20)) || { echo "bench.sh: --runs must be 1..20" >&2; exit 2; }
PATH_LIST=()
[[ $PATHS == none ]] || IFS=, read -r -a PATH_LIST <<<"$PATHS"
for p in "${PATH_LIST[@]}"; do
	[[ $p == plain || $p == wg || $p == masque ]] || { echo "bench.sh: unknown path '$p' (plain, wg, masque)" >&2; exit 2; }
done

if [[ $EUID -ne 0 ]]; then
	echo "bench.sh: must run as root: sudo scripts/bench.sh" >&2
	exit 1
fi
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
# shellcheck source=scripts/netns.sh
source "$REPO/scripts/netns.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
note() { printf '%s\n' "$*" >&2; }

# --- prerequisites --------------------------------------------------------
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ping >/dev/null || need+=(iputils-ping)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v jq >/dev/null || need+=(jq)
if ((${#need[@]})); then
	say "installing ${need[*]}"
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
command -v go >/dev/null || { echo "bench.sh: go not found (expected in /usr/local/go/bin)" >&2; exit 1; }

# --- state and teardown ---------------------------------------------------
HEX=$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
ID=mqb-$HEX
C=$ID-c S=$ID-s T=$ID-t
EXTRA_NS=()                    # namespaces beyond netns.sh's three (--scale)
WGC=mqbc$HEX WGS=mqbs$HEX      # wireguard-go interfaces (their UAPI sockets are global)
WORK=$(mktemp -d /tmp/masque-bench.XXXXXX)
WG_RUNDIR_MADE=0 # whether we created /var/run/wireguard (removed again if empty)
RESULTS=$WORK/results.tsv
: >"$RESULTS"
PIDS=() # long-lived background processes, stopped in reverse order

stop_pid() { # stop_pid PID: SIGTERM, up to 5 s, then SIGKILL
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# forget_pid PID: drop PID from PIDS once it has been stopped.
forget_pid() {
	local i
	for i in "${!PIDS[@]}"; do
		[[ ${PIDS[i]} == "$1" ]] && unset 'PIDS[i]'
	done
	PIDS=("${PIDS[@]}")
}

cleanup() {
	local rc=$? i ns pid
	trap - EXIT INT TERM
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	# Anything still running inside our namespaces was started by us.
	for ns in "${EXTRA_NS[@]}" "$C" "$S" "$T"; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null || true
		done
	done
	for ns in "${EXTRA_NS[@]}"; do
		ip netns del "$ns" 2>/dev/null || true
	done
	netns_destroy "$ID"
	rm -f "/var/run/wireguard/$WGC.sock" "/var/run/wireguard/$WGS.sock"
	((WG_RUNDIR_MADE == 0)) || rmdir /var/run/wireguard 2>/dev/null || true
	if ((rc != 0)) && [[ -d $WORK ]]; then
		for f in "$WORK"/*.log; do
			[[ -s $f ]] || continue
			echo "--- last lines of $(basename "$f")" >&2
			tail -n 15 "$f" >&2
		done
	fi
	if ((KEEP)); then
		echo "bench.sh: kept $WORK" >&2
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bgwait CMD...: run CMD in the background and wait for it. bash runs a
# trap only after a foreground command ends, and timeout(1) puts its
# command in a process group of its own, out of reach of Ctrl-C: a long
# test run in the foreground would delay or swallow Ctrl-C. wait returns
# at once on a trapped signal, and cleanup then kills what runs in our
# namespaces.
bgwait() {
	"$@" &
	wait $!
}

# wait_for FILE PATTERN SECONDS PID: wait until FILE has a line matching
# PATTERN; fail if PID dies or time runs out.
wait_for() {
	local file=$1 pat=$2 secs=$3 pid=$4 i
	for ((i = 0; i < secs * 10; i++)); do
		grep -q -- "$pat" "$file" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { echo "bench.sh: process $pid exited; see $(basename "$file"):" >&2; tail -n 20 "$file" >&2; return 1; }
		sleep 0.1
	done
	echo "bench.sh: no '$pat' in $(basename "$file") within ${secs}s" >&2
	return 1
}

# wait_listen NS PORT PROTO SECONDS: wait until something listens on PORT.
wait_listen() {
	local ns=$1 port=$2 proto=$3 secs=$4 i
	for ((i = 0; ; i++)); do
		[[ -n $(ip netns exec "$ns" ss -Hln"${proto:0:1}" "sport = :$port" 2>/dev/null) ]] && return 0
		((i < secs * 20)) || return 1
		sleep 0.05
	done
}

# --- build ----------------------------------------------------------------
say "building masqued, masque and wireguard-go"
go build -buildvcs=false -o "$WORK/masqued" ./cmd/masqued
go build -buildvcs=false -o "$WORK/masque" ./cmd/masque
((SCALE == 0)) || go build -buildvcs=false -o "$WORK/connectload" ./e2e/internal/connectload
if [[ " ${PATH_LIST[*]} " == *" wg "* ]]; then
	# A throwaway module: wireguard-go's main package is the module root.
	mkdir -p "$WORK/wgmod"
	(
		cd "$WORK/wgmod"
		export GOFLAGS=-buildvcs=false GOWORK=off
		go mod init bench.invalid/wg >/dev/null 2>&1
		go get golang.zx2c4.com/wireguard@latest >"$WORK/wgbuild.log" 2>&1
		go build -o "$WORK/wireguard-go" golang.zx2c4.com/wireguard >>"$WORK/wgbuild.log" 2>&1
	) || { echo "bench.sh: building wireguard-go failed:" >&2; cat "$WORK/wgbuild.log" >&2; exit 1; }
	WG_VERSION=$("$WORK/wireguard-go" --version | head -n 1)
	WG_MODVER=$(cd "$WORK/wgmod" && go list -m -f '{{.Version}}' golang.zx2c4.com/wireguard)
fi

# --- topology and credentials ---------------------------------------------
say "creating namespaces $C (client), $S (server), $T (target)"
netns_create "$ID"

"$WORK/masqued" cert --dir "$WORK/pki" --host 198.18.1.2 >/dev/null
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
echo "bench $TOKEN" >"$WORK/tokens"
echo "$TOKEN" >"$WORK/bench.token"
chmod 600 "$WORK/tokens" "$WORK/bench.token"

# --- measurement helpers --------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

# proc_ticks PID: utime+stime of PID in clock ticks (0 if it is gone).
proc_ticks() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	s=${s##*) } # fields after "(comm) ": state is 1st, utime 12th, stime 13th
	awk '{print $12 + $13}' <<<"$s"
}

# machine_ticks: "busy total" jiffies of all CPUs.
machine_ticks() {
	awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}

now() { date +%s.%N; }

# record RUN PATH METRIC VALUE
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:--}" >>"$RESULTS"; }

# ping_stats NS ADDR COUNT INTERVAL: prints "avg_ms loss_pct" (or "- 100").
ping_stats() {
	local ns=$1 addr=$2 count=$3 ival=$4 out avg loss deadline f
	deadline=$(awk -v c="$count" -v i="$ival" 'BEGIN {printf "%d", c * i + 3}')
	f=$(mktemp "$WORK/ping.XXXXXX")
	bgwait timeout $((deadline + 5)) ip netns exec "$ns" ping -n -q -c "$count" -i "$ival" -W 1 -w "$deadline" "$addr" >"$f" 2>&1 || true
	out=$(<"$f")
	rm -f "$f"
	loss=$(sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p' <<<"$out")
	avg=$(sed -n 's|^rtt .* = [0-9.]*/\([0-9.]*\)/.*|\1|p' <<<"$out")
	echo "${avg:--} ${loss:-100}"
}

# CPU_PROCS: "label pid" pairs of the tunnel processes of the current path.
CPU_PROCS=()

# iperf_test RUN PATH NAME [iperf3 client args...]: one bounded iperf3 test
# client → target; records goodput (Mbit/s at the receiver), loss for UDP,
# retransmits for TCP, and CPU (% of one core) per tunnel process and of
# the machine.
iperf_test() {
	local run=$1 path=$2 name=$3 port=5201 spid json=$WORK/iperf-$2-$3.json i
	shift 3
	ip netns exec "$T" timeout $((DUR + 30)) iperf3 -s -1 -B 198.18.2.2 -p $port >"$WORK/iperf3-server.log" 2>&1 &
	spid=$!
	if ! wait_listen "$T" $port t 5; then
		note "bench.sh: iperf3 server did not start"
		stop_pid "$spid"
		record "$run" "$path" "$name" -
		return 0
	fi
	local -a t0=() t1=()
	local m0 m1 w0 w1 pair
	for pair in "${CPU_PROCS[@]}"; do t0+=("$(proc_ticks "${pair#* }")"); done
	local -a prof=()
	if ((PROFILE)) && [[ $path == masque && $name == tcp1.* && $run == "$RUNS" ]]; then
		profile_start "$name"
	fi
	m0=$(machine_ticks) w0=$(now)
	bgwait timeout $((DUR + 20)) ip netns exec "$C" iperf3 -c 198.18.2.2 -p $port -t "$DUR" -J \
		--connect-timeout 3000 "$@" >"$json" 2>"$WORK/iperf3-client.log" || true
	w1=$(now) m1=$(machine_ticks)
	for pair in "${CPU_PROCS[@]}"; do t1+=("$(proc_ticks "${pair#* }")"); done
	stop_pid "$spid"
	for i in "${prof[@]}"; do wait "$i" 2>/dev/null || true; done

	local wall mbps
	wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN {print b - a}')
	# Receiver-side goodput; for UDP iperf3 3.x reports the receiver in
	# end.sum_received (newer) or in end.sum with lost_percent (older).
	mbps=$(jq -r '
		if .error then "-"
		elif .end.sum_received then (.end.sum_received.bits_per_second / 1e6)
		elif .end.sum.lost_percent != null then (.end.sum.bits_per_second * (1 - .end.sum.lost_percent / 100) / 1e6)
		else "-" end' "$json" 2>/dev/null || echo -)
	if [[ $mbps == - ]]; then
		note "bench.sh: $path $name failed: $(jq -r '.error // empty' "$json" 2>/dev/null)$(tail -n 2 "$WORK/iperf3-client.log")"
	fi
	record "$run" "$path" "$name" "$mbps"
	if [[ $name == udp* ]]; then
		record "$run" "$path" "$name.loss" "$(jq -r '(.end.sum.lost_percent // "-")' "$json" 2>/dev/null || echo -)"
	else
		record "$run" "$path" "$name.retr" "$(jq -r '(.end.sum_sent.retransmits // "-")' "$json" 2>/dev/null || echo -)"
	fi
	record "$run" "$path" "$name.cpu.machine" "$(awk -v a="$m0" -v b="$m1" -v n="$NCPU" '
		BEGIN {split(a, x, " "); split(b, y, " "); if (y[2] > x[2]) printf "%.1f", 100 * n * (y[1] - x[1]) / (y[2] - x[2]); else print "-"}')"
	for i in "${!CPU_PROCS[@]}"; do
		record "$run" "$path" "$name.cpu.${CPU_PROCS[i]%% *}" "$(awk -v a="${t0[i]}" -v b="${t1[i]}" -v hz="$CLK_TCK" -v w="$wall" '
			BEGIN {printf "%.1f", 100 * (b - a) / hz / w}')"
	done
	sleep 1 # let queues drain before the next test
}

# profile_start TEST: CPU profiles of masqued (metrics listener, --pprof)
# and masque up (status socket) over the iperf3 test about to start, from
# 0.5 s in, into $WORK/prof-{srv,cli}-TEST.pb.gz; adds the curl PIDs to the
# caller's prof array.
profile_start() {
	local secs=$((DUR - 1))
	((secs >= 1)) || secs=1
	(sleep 0.5; ip netns exec "$S" timeout $((secs + 10)) curl -sf -o "$WORK/prof-srv-$1.pb.gz" \
		"http://127.0.0.1:9090/debug/pprof/profile?seconds=$secs") &
	prof+=($!)
	(sleep 0.5; timeout $((secs + 10)) curl -sf -o "$WORK/prof-cli-$1.pb.gz" \
		--unix-socket "$WORK/client-state/masque.sock" "http://x/debug/pprof/profile?seconds=$secs") &
	prof+=($!)
}

# print_profiles: the top of each profile taken (--profile).
print_profiles() {
	local f bin out
	for f in "$WORK"/prof-*.pb.gz; do
		[[ -s $f ]] || continue
		if [[ $f == */prof-srv-* ]]; then bin=masqued; else bin=masque; fi
		say "profile ${f##*/prof-}: $([[ $bin == masqued ]] && echo masqued || echo 'masque up')"
		if out=$(go tool pprof -top -nodecount=25 "$WORK/$bin" "$f" 2>&1); then
			printf '%s\n' "$out" | sed -n '1,32p'
		else
			note "bench.sh: go tool pprof failed: $(printf '%s\n' "$out" | tail -n 3)"
		fi
	done
}

# measure RUN PATH: every test of one path, which is already set up.
measure() {
	local run=$1 path=$2 avg loss ppid pfile=$WORK/ping-load.out cnt
	read -r avg loss < <(ping_stats "$C" 198.18.2.2 20 0.05)
	record "$run" "$path" ping.idle "$avg"
	record "$run" "$path" ping.idle.loss "$loss"
	read -r avg loss < <(ping_stats "$C" 2001:db8:2::2 20 0.05)
	record "$run" "$path" ping6.idle "$avg"

	# Ping under load: during the one-stream upload, from 1 s in to 1 s
	# before its end, 10 per second.
	cnt=$(((DUR - 2) * 10))
	((cnt >= 5)) || cnt=5
	(sleep 1; ping_stats "$C" 198.18.2.2 "$cnt" 0.1 >"$pfile") &
	ppid=$!
	iperf_test "$run" "$path" tcp1.up
	wait "$ppid" 2>/dev/null || true
	read -r avg loss <"$pfile" || { avg=- loss=-; }
	record "$run" "$path" ping.load "$avg"
	record "$run" "$path" ping.load.loss "$loss"

	iperf_test "$run" "$path" tcp1.down -R
	iperf_test "$run" "$path" tcp4.up -P 4
	iperf_test "$run" "$path" tcp4.down -P 4 -R
	iperf_test "$run" "$path" udp500.up -u -b 500M -l 1200
	iperf_test "$run" "$path" udp500.down -u -b 500M -l 1200 -R
	iperf_test "$run" "$path" udpmax.up -u -b 0 -l 1200
	iperf_test "$run" "$path" udpmax.down -u -b 0 -l 1200 -R
}

# record_rss RUN PATH: peak RSS (VmHWM, MB) of the tunnel processes.
record_rss() {
	local pair kb
	for pair in "${CPU_PROCS[@]}"; do
		kb=$(awk '/^VmHWM:/ {print $2}' "/proc/${pair#* }/status" 2>/dev/null || true)
		[[ -z $kb ]] || record "$1" "$2" "rss.${pair%% *}" "$(awk -v k="$kb" 'BEGIN {printf "%.1f", k / 1024}')"
	done
}

# masqued_metrics: masqued's Prometheus metrics (from inside the server namespace).
masqued_metrics() {
	ip netns exec "$S" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9090 &&
		printf "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 && cat <&3' 2>/dev/null | grep '^masque_' || true
}

# check_reach PATH: the target must answer before we measure.
check_reach() {
	local avg loss
	read -r avg loss < <(ping_stats "$C" 198.18.2.2 3 0.2)
	if [[ $avg == - ]]; then
		echo "bench.sh: $1: the target does not answer through this path" >&2
		return 1
	fi
}

# --- the three paths --------------------------------------------------------
plain_up() {
	ip -n "$T" route add 198.18.1.0/24 via 198.18.2.1
	ip -n "$T" -6 route add 2001:db8:1::/64 via 2001:db8:2::1
	CPU_PROCS=()
}
plain_down() {
	ip -n "$T" route del 198.18.1.0/24 via 198.18.2.1 2>/dev/null || true
	ip -n "$T" -6 route del 2001:db8:1::/64 via 2001:db8:2::1 2>/dev/null || true
}

WG_PIDS=()
wg_up() {
	local ck sk
	if [[ ! -s $WORK/wgc.key ]]; then
		(umask 077; wg genkey >"$WORK/wgc.key"; wg genkey >"$WORK/wgs.key")
	fi
	ck=$(wg pubkey <"$WORK/wgc.key") sk=$(wg pubkey <"$WORK/wgs.key")
	if [[ ! -d /var/run/wireguard ]]; then
		mkdir -p /var/run/wireguard
		WG_RUNDIR_MADE=1
	fi

	ip netns exec "$S" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$WORK/wireguard-go" -f "$WGS" >"$WORK/wg-server.log" 2>&1 &
	WG_PIDS=($!)
	PIDS+=($!)
	ip netns exec "$C" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$WORK/wireguard-go" -f "$WGC" >"$WORK/wg-client.log" 2>&1 &
	WG_PIDS+=($!)
	PIDS+=($!)
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -S /var/run/wireguard/$WGS.sock && -S /var/run/wireguard/$WGC.sock ]] && break
		sleep 0.05
	done

	ip netns exec "$S" wg set "$WGS" listen-port 51820 private-key "$WORK/wgs.key" \
		peer "$ck" allowed-ips 198.18.100.2/32,2001:db8:100::2/128
	ip -n "$S" addr add 198.18.100.1/24 dev "$WGS"
	ip -n "$S" addr add 2001:db8:100::1/64 dev "$WGS" nodad
	ip -n "$S" link set "$WGS" mtu 1420 up
	# Masquerade what leaves the server toward the target, as masqued does
	# for its clients (a table of our own, not masqued's "inet masqued").
	ip netns exec "$S" nft -f - <<-EOF
		table inet mqbench_wg {
			chain postrouting {
				type nat hook postrouting priority srcnat; policy accept;
				oifname "$NETNS_EGRESS" ip saddr 198.18.100.0/24 masquerade
				oifname "$NETNS_EGRESS" ip6 saddr 2001:db8:100::/64 masquerade
			}
		}
	EOF

	ip netns exec "$C" wg set "$WGC" private-key "$WORK/wgc.key" \
		peer "$sk" endpoint 198.18.1.2:51820 allowed-ips 198.18.2.0/24,2001:db8:2::/64
	ip -n "$C" addr add 198.18.100.2/24 dev "$WGC"
	ip -n "$C" addr add 2001:db8:100::2/64 dev "$WGC" nodad
	ip -n "$C" link set "$WGC" mtu 1420 up
	ip -n "$C" route add 198.18.2.0/24 dev "$WGC" src 198.18.100.2
	ip -n "$C" -6 route add 2001:db8:2::/64 dev "$WGC" src 2001:db8:100::2
	CPU_PROCS=("cli ${WG_PIDS[1]}" "srv ${WG_PIDS[0]}")
}
wg_down() {
	local pid
	for pid in "${WG_PIDS[@]}"; do
		stop_pid "$pid"
		forget_pid "$pid"
	done
	WG_PIDS=()
	ip netns exec "$S" nft delete table inet mqbench_wg 2>/dev/null || true
	ip -n "$C" link del "$WGC" 2>/dev/null || true
	ip -n "$S" link del "$WGS" 2>/dev/null || true
	rm -f "/var/run/wireguard/$WGC.sock" "/var/run/wireguard/$WGS.sock"
}

MASQUED_PID= MASQUE_PID=
# masqued_start: masqued in the server namespace; client pools from the
# test ranges too (not its defaults 100.64.0.0/16 and a ULA).
masqued_start() { # masqued_start [extra masqued flags...]
	# The scaling runs hold many sessions of one token and open sessions
	# as fast as they can: lift the per-identity and handshake-rate caps,
	# which exist for hostile load, so that they measure capacity.
	ip netns exec "$S" "$WORK/masqued" run --listen 198.18.1.2:4433 \
		--max-sessions-per-identity 100000 --max-handshake-rate -1 \
		--cert "$WORK/pki/server.crt" --key "$WORK/pki/server.key" \
		--tokens "$WORK/tokens" --egress "$NETNS_EGRESS" --state-dir "$WORK/server-state" \
		--pool4 198.18.64.0/18 --pool6 2001:db8:64::/64 \
		--metrics 127.0.0.1:9090 $( ((PROFILE)) && echo --pprof) --log-level warn "$@" 2>"$WORK/masqued.log" &
	MASQUED_PID=$!
	PIDS+=("$MASQUED_PID")
	# --log-level warn hides "listening": wait for the UDP socket instead.
	local i
	for ((i = 0; i < 150; i++)); do
		kill -0 "$MASQUED_PID" 2>/dev/null || { echo "bench.sh: masqued exited:" >&2; tail -n 20 "$WORK/masqued.log" >&2; return 1; }
		wait_listen "$S" 4433 u 0 && return 0
		sleep 0.1
	done
	echo "bench.sh: masqued did not listen within 15 s" >&2
	return 1
}
masqued_stop() {
	[[ -n $MASQUED_PID ]] || return 0
	stop_pid "$MASQUED_PID"
	forget_pid "$MASQUED_PID"
	MASQUED_PID=
}
masque_up() {
	masqued_start
	ip netns exec "$C" "$WORK/masque" up --server 198.18.1.2:4433 --ca "$WORK/pki/ca.crt" \
		--token-file "$WORK/bench.token" --state-dir "$WORK/client-state" --log-level warn \
		>"$WORK/masque.out" 2>"$WORK/masque.log" &
	MASQUE_PID=$!
	PIDS+=("$MASQUE_PID")
	wait_for "$WORK/masque.out" "^up: " 20 "$MASQUE_PID"
	CPU_PROCS=("cli $MASQUE_PID" "srv $MASQUED_PID")
}
masque_down() {
	if [[ -n $MASQUE_PID ]]; then
		stop_pid "$MASQUE_PID"
		forget_pid "$MASQUE_PID"
		MASQUE_PID=
	fi
	masqued_stop
}

# show_offloads PATH: the client TUN's offloads (the issue's "gate").
show_offloads() {
	local dev
	case $1 in
	wg) dev=$WGC ;;
	masque) dev=masque0 ;;
	*) return 0 ;;
	esac
	command -v ethtool >/dev/null || return 0
	note "$1 client TUN $dev: mtu $(ip -n "$C" -o link show "$dev" | sed -n 's/.* mtu \([0-9]*\).*/\1/p'), $(ip netns exec "$C" ethtool -k "$dev" 2>/dev/null |
		awk -F': ' '/^(tcp-segmentation-offload|generic-receive-offload|tx-udp-segmentation|rx-udp-gro-forwarding|tx-checksumming)/ {printf "%s%s=%s", s, $1, $2; s = " "}')"
}

# --- the comparison ---------------------------------------------------------
say "host: $NCPU CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), kernel $(uname -r), $(go version | awk '{print $3}')"
note "masque $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty'); ${WG_VERSION:-wireguard-go not built}${WG_MODVER:+ ($WG_MODVER)}"
note "paths: ${PATH_LIST[*]}; $RUNS run(s); iperf3 tests of ${DUR} s"

START=$SECONDS
for ((run = 1; run <= RUNS; run++)); do
	for path in "${PATH_LIST[@]}"; do
		say "run $run/$RUNS: $path ($((SECONDS - START)) s elapsed)"
		"${path}_up"
		if check_reach "$path"; then
			((run > 1)) || show_offloads "$path"
			measure "$run" "$path"
			record_rss "$run" "$path"
			if [[ $path == masque ]]; then
				# What masqued itself dropped, by reason (counters that are not 0).
				masqued_metrics | awk '/^masque_tunnel_dropped_packets_total/ && $2 != 0 {printf "masqued drops: %s\n", $0}' >&2
			fi
		fi
		"${path}_down"
	done
done
say "measured in $((SECONDS - START)) s"
[[ -z $OUT ]] || cp "$RESULTS" "$OUT"

# --- report ---------------------------------------------------------------
# median_of PATH METRIC: the median over runs of the recorded values ("-"
# when none).
median_of() {
	awk -F'\t' -v p="$1" -v m="$2" '$2 == p && $3 == m && $4 != "-" {print $4}' "$RESULTS" | sort -g |
		awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# num VALUE DECIMALS
num() { if [[ $1 == - ]]; then echo -; else printf "%.${2}f" "$1"; fi; }
# ratio A B: A/B to 2 decimals ("-" when undefined).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b}'; }
# atleast A MIN: A if it is at least MIN, else "-".
atleast() { awk -v a="$1" -v m="$2" 'BEGIN {if (a != "-" && a + 0 >= m) print a; else print "-"}'; }
# diffpp A B: A-B in percentage points.
diffpp() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-") print "-"; else printf "%+.1fpp", a - b}'; }

ROWS=(
	"tcp1.up|TCP 1 stream, client→target|Gbit/s|3|1000"
	"tcp1.down|TCP 1 stream, target→client|Gbit/s|3|1000"
	"tcp4.up|TCP 4 streams, client→target|Gbit/s|3|1000"
	"tcp4.down|TCP 4 streams, target→client|Gbit/s|3|1000"
	"tcp1.up.retr|TCP 1 up: retransmits|segs|0|1"
	"tcp1.down.retr|TCP 1 down: retransmits|segs|0|1"
	"tcp4.up.retr|TCP 4 up: retransmits|segs|0|1"
	"udp500.up|UDP 500M up: goodput|Mbit/s|0|1"
	"udp500.up.loss|UDP 500M up: loss|%|2|1"
	"udp500.down|UDP 500M down: goodput|Mbit/s|0|1"
	"udp500.down.loss|UDP 500M down: loss|%|2|1"
	"udpmax.up|UDP unlimited up: goodput|Mbit/s|0|1"
	"udpmax.up.loss|UDP unlimited up: loss|%|2|1"
	"udpmax.down|UDP unlimited down: goodput|Mbit/s|0|1"
	"udpmax.down.loss|UDP unlimited down: loss|%|2|1"
	"ping.idle|ping idle, avg RTT|ms|3|1"
	"ping6.idle|ping IPv6 idle, avg RTT|ms|3|1"
	"ping.load|ping during TCP 1 up, avg RTT|ms|3|1"
	"ping.load.loss|ping during TCP 1 up: loss|%|1|1"
	"rss.cli|peak RSS, client tunnel process|MB|1|1"
	"rss.srv|peak RSS, server tunnel process|MB|1|1"
)
TESTS=(tcp1.up tcp1.down tcp4.up tcp4.down udp500.up udp500.down udpmax.up udpmax.down)

# The table goes to stdout; everything else went to stderr.
((${#PATH_LIST[@]} == 0)) || {
	echo
	echo "masque bench: client → server → target, median of $RUNS run(s), ${DUR} s per iperf3 test"
	echo "($NCPU CPUs, kernel $(uname -r); wireguard-go ${WG_MODVER:-n/a})"
	echo
	printf '%-34s %-7s %10s %10s %10s %12s %12s\n' metric unit plain wg-go masque masque/plain masque/wg-go
	printf '%.0s-' {1..101}
	echo
	for row in "${ROWS[@]}"; do
		IFS='|' read -r key label unit dec div <<<"$row"
		declare -A v=()
		for p in plain wg masque; do
			m=$(median_of "$p" "$key")
			[[ $m == - ]] || m=$(awk -v a="$m" -v d="$div" 'BEGIN {print a / d}')
			v[$p]=$m
		done
		if [[ $unit == % ]]; then
			# A ratio of loss percentages near 0 means nothing: show the
			# difference in percentage points instead.
			r1=$(diffpp "${v[masque]}" "${v[plain]}") r2=$(diffpp "${v[masque]}" "${v[wg]}")
		elif [[ $unit == segs ]]; then
			# Retransmits: a ratio to a handful means nothing either.
			r1=$(ratio "${v[masque]}" "$(atleast "${v[plain]}" 100)") r2=$(ratio "${v[masque]}" "$(atleast "${v[wg]}" 100)")
		else
			r1=$(ratio "${v[masque]}" "${v[plain]}") r2=$(ratio "${v[masque]}" "${v[wg]}")
		fi
		printf '%-34s %-7s %10s %10s %10s %12s %12s\n' "$label" "$unit" \
			"$(num "${v[plain]}" "$dec")" "$(num "${v[wg]}" "$dec")" "$(num "${v[masque]}" "$dec")" "$r1" "$r2"
		unset v
	done
	# Added RTT over the plain path (the issue's "added RTT no worse").
	pi=$(median_of plain ping.idle) wi=$(median_of wg ping.idle) mi=$(median_of masque ping.idle)
	added() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-") print "-"; else printf "%.3f", a - b}'; }
	wa=$(added "$wi" "$pi") ma=$(added "$mi" "$pi")
	printf '%-34s %-7s %10s %10s %10s %12s %12s\n' "ping idle, RTT added to plain" ms "$(added "$pi" "$pi")" "$wa" "$ma" - "$(ratio "$ma" "$wa")"

	echo
	echo "CPU during each test, % of one core (median); cli/srv = the tunnel processes"
	echo "(wireguard-go, masque up / masqued); machine = all CPUs busy, iperf3 and kernel included;"
	echo "Mb/cpu-s = goodput per machine CPU-second"
	printf '%-12s %7s %7s %7s %7s %9s %9s %9s %9s %9s %9s %10s\n' test \
		"wg cli" "wg srv" "mq cli" "mq srv" "mach pl" "mach wg" "mach mq" "Mb/cpu pl" "Mb/cpu wg" "Mb/cpu mq" "mq/wg eff"
	printf '%.0s-' {1..120}
	echo
	for t in "${TESTS[@]}"; do
		declare -A e=()
		for p in plain wg masque; do
			g=$(median_of "$p" "$t") c=$(median_of "$p" "$t.cpu.machine")
			e[$p]=$(awk -v g="$g" -v c="$c" 'BEGIN {if (g == "-" || c == "-" || c + 0 == 0) print "-"; else printf "%.0f", g / (c / 100)}')
		done
		printf '%-12s %7s %7s %7s %7s %9s %9s %9s %9s %9s %9s %10s\n' "$t" \
			"$(median_of wg "$t.cpu.cli")" "$(median_of wg "$t.cpu.srv")" \
			"$(median_of masque "$t.cpu.cli")" "$(median_of masque "$t.cpu.srv")" \
			"$(median_of plain "$t.cpu.machine")" "$(median_of wg "$t.cpu.machine")" "$(median_of masque "$t.cpu.machine")" \
			"${e[plain]}" "${e[wg]}" "${e[masque]}" "$(ratio "${e[masque]}" "${e[wg]}")"
		unset e
	done
	echo
	echo "ratios: masque/plain and masque/wg-go of the medians; for throughput higher is better,"
	echo "for loss, retransmits, RTT, memory and CPU lower is better; loss rows compare in percentage"
	echo "points (pp). '-' = not measured or failed."
}

((PROFILE == 0)) || print_profiles
((SCALE)) || exit 0

# --- scaling (--scale, masque only, one run) --------------------------------
# rss_kb PID: resident set size in kB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# gauge NAME: one unlabelled metric of masqued ("-" if absent).
gauge() { masqued_metrics | awk -v n="$1" '$1 == n {print $2; f = 1} END {if (!f) print "-"}'; }
# cpu_pct T0 T1 W0 W1: % of one core from ticks and wall-clock seconds.
cpu_pct() { awk -v a="$1" -v b="$2" -v w0="$3" -v w1="$4" -v hz="$CLK_TCK" 'BEGIN {printf "%.0f", 100 * (b - a) / hz / (w1 - w0)}'; }
machine_pct() { awk -v a="$1" -v b="$2" -v n="$NCPU" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * n * (y[1] - x[1]) / (y[2] - x[2])}'; }

# scale_ns K: namespace ID-kK, a client of its own wired to the server
# (198.19.K.1/24 ── kK 198.19.K.2/24 in the server namespace).
scale_ns() {
	local k=$1 ns=$ID-k$1
	ip netns add "$ns"
	EXTRA_NS+=("$ns")
	ip -n "$ns" link set lo up
	ip -n "$ns" link add c0 type veth peer name "k$k" netns "$S"
	ip -n "$ns" addr add "198.19.$k.1/24" dev c0
	ip -n "$S" addr add "198.19.$k.2/24" dev "k$k"
	ip -n "$ns" link set c0 up
	ip -n "$S" link set "k$k" up
	ip -n "$ns" route add default via "198.19.$k.2"
}

SCALE_PIDS=() # masque up per client namespace, index K-1
SCALE_NS=0    # client namespaces made so far
# scale_clients N: start N masque up, client K in namespace ID-kK.
scale_clients() {
	local n=$1 k
	for ((k = 1; k <= n; k++)); do
		((k <= SCALE_NS)) || { scale_ns "$k"; SCALE_NS=$k; }
		rm -rf "$WORK/scale-state-$k"
		ip netns exec "$ID-k$k" "$WORK/masque" up --server 198.18.1.2:4433 --ca "$WORK/pki/ca.crt" \
			--token-file "$WORK/bench.token" --state-dir "$WORK/scale-state-$k" --log-level warn \
			>"$WORK/scale-$k.out" 2>"$WORK/scale-$k.log" &
		SCALE_PIDS+=($!)
		PIDS+=($!)
	done
	for ((k = 1; k <= n; k++)); do
		wait_for "$WORK/scale-$k.out" "^up: " 30 "${SCALE_PIDS[k - 1]}"
	done
}

# scale_iperf N DIR LABEL: one TCP stream from each of the N clients at once
# (DIR "up" or "down"); prints "aggregate_gbps min_mbps max_mbps failed
# masqued_cpu machine_cpu".
scale_iperf() {
	local n=$1 dir=$2 k spids=() cpids=() rev=() vals=() failed=0 t0 t1 w0 w1 m0 m1 v
	[[ $dir == up ]] || rev=(-R)
	for ((k = 1; k <= n; k++)); do
		ip netns exec "$T" timeout $((DUR + 60)) iperf3 -s -1 -B 198.18.2.2 -p $((5300 + k)) >/dev/null 2>&1 &
		spids+=($!)
	done
	for ((k = 1; k <= n; k++)); do
		wait_listen "$T" $((5300 + k)) t 5 || true
	done
	t0=$(proc_ticks "$MASQUED_PID") m0=$(machine_ticks) w0=$(now)
	for ((k = 1; k <= n; k++)); do
		timeout $((DUR + 40)) ip netns exec "$ID-k$k" iperf3 -c 198.18.2.2 -p $((5300 + k)) -t "$DUR" -J \
			--connect-timeout 10000 "${rev[@]}" >"$WORK/scale-iperf-$k.json" 2>/dev/null &
		cpids+=($!)
	done
	for k in "${cpids[@]}"; do wait "$k" || true; done
	w1=$(now) m1=$(machine_ticks) t1=$(proc_ticks "$MASQUED_PID")
	for k in "${spids[@]}"; do stop_pid "$k"; done
	for ((k = 1; k <= n; k++)); do
		v=$(jq -r '.end.sum_received.bits_per_second // empty' "$WORK/scale-iperf-$k.json" 2>/dev/null || true)
		if [[ -n $v ]]; then vals+=("$v"); else ((failed++)) || true; fi
	done
	if ((${#vals[@]})); then
		printf '%s\n' "${vals[@]}" | awk -v f="$failed" '
			{s += $1; if (NR == 1 || $1 < lo) lo = $1; if ($1 > hi) hi = $1}
			END {printf "%.3f %.0f %.0f %d", s / 1e9, lo / 1e6, hi / 1e6, f}'
	else
		printf -- '- - - %d' "$failed"
	fi
	echo " $(cpu_pct "$t0" "$t1" "$w0" "$w1") $(machine_pct "$m0" "$m1")"
	sleep 1
}



SCALE_START=$SECONDS
# The load tool's sessions come from 32 addresses: masqued admits at most
# 64 connections per source address.
for ((i = 100; i < 132; i++)); do
	ip -n "$C" addr add "198.18.1.$i/24" dev c0
done
LOCAL=198.18.1.100-198.18.1.131

SCALE_ROWS=()
for N in 1 8 32; do
	# A fresh masqued and fresh clients for each N, so that the memory
	# figure is the sessions' and not what earlier traffic left behind.
	say "scaling: $N masque client(s) at once ($((SECONDS - SCALE_START)) s elapsed)"
	masqued_start
	sleep 1
	RSS0=$(rss_kb "$MASQUED_PID")
	scale_clients "$N"
	sleep 2
	rss=$(rss_kb "$MASQUED_PID") sessions=$(gauge masque_tunnel_sessions)
	read -r up_g up_lo up_hi up_f up_cpu up_m < <(scale_iperf "$N" up)
	read -r dn_g dn_lo dn_hi dn_f dn_cpu dn_m < <(scale_iperf "$N" down)
	peak=$(awk '/^VmHWM:/ {print $2}' "/proc/$MASQUED_PID/status")
	SCALE_ROWS+=("$(printf '%7s %8s %9s %11s %12s %6s %9s %11s %12s %6s %12s %8s %8s' "$N" "$sessions" \
		"$up_g" "$up_lo/$up_hi" "$up_cpu/$up_m" "$up_f" "$dn_g" "$dn_lo/$dn_hi" "$dn_cpu/$dn_m" "$dn_f" \
		"$(awk -v a="$RSS0" 'BEGIN {printf "%.1f", a / 1024}')/$(awk -v a="$rss" 'BEGIN {printf "%.1f", a / 1024}')" \
		"$(awk -v a="$rss" -v b="$RSS0" -v n="$N" 'BEGIN {printf "%.0f", (a - b) / n}')" \
		"$(awk -v a="$peak" 'BEGIN {printf "%.1f", a / 1024}')")")
	for ((i = ${#SCALE_PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${SCALE_PIDS[i]}"
		forget_pid "${SCALE_PIDS[i]}"
	done
	SCALE_PIDS=()
	masqued_stop
done

# Handshakes: sessions opened and closed as fast as 16 workers can, for
# the test duration, from the client namespace.
say "scaling: session set-up rate ($((SECONDS - SCALE_START)) s elapsed)"
masqued_start
sleep 1
t0=$(proc_ticks "$MASQUED_PID") m0=$(machine_ticks) w0=$(now)
bgwait timeout $((DUR + 40)) ip netns exec "$C" "$WORK/connectload" -mode churn -n 0 -duration "${DUR}s" -c 16 \
	-server 198.18.1.2:4433 -ca "$WORK/pki/ca.crt" -token-file "$WORK/bench.token" -local "$LOCAL" \
	>"$WORK/connectload-churn.out" 2>"$WORK/connectload-churn.log" || true
HS=$(tail -n 1 "$WORK/connectload-churn.out")
w1=$(now) m1=$(machine_ticks) t1=$(proc_ticks "$MASQUED_PID")
HS_CPU=$(cpu_pct "$t0" "$t1" "$w0" "$w1") HS_M=$(machine_pct "$m0" "$m1")

# Idle sessions: a fresh masqued (Go keeps freed heap for a while), then
# 1,000 sessions held open.
IDLE_N=1000
say "scaling: $IDLE_N idle sessions ($((SECONDS - SCALE_START)) s elapsed)"
masqued_stop
masqued_start
sleep 1
IDLE_RSS0=$(rss_kb "$MASQUED_PID")
ip netns exec "$C" "$WORK/connectload" -mode idle -n "$IDLE_N" -c 32 -duration 180s \
	-server 198.18.1.2:4433 -ca "$WORK/pki/ca.crt" -token-file "$WORK/bench.token" -local "$LOCAL" \
	>"$WORK/connectload-idle.out" 2>"$WORK/connectload-idle.log" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
IDLE_READY=
if wait_for "$WORK/connectload-idle.out" '"event":"ready"' 150 "$LOAD_PID"; then
	IDLE_READY=$(grep -m1 '"event":"ready"' "$WORK/connectload-idle.out")
	sleep 5 # let the sessions settle (keep-alives, GC)
	t0=$(proc_ticks "$MASQUED_PID") w0=$(now)
	sleep 5
	t1=$(proc_ticks "$MASQUED_PID") w1=$(now)
	IDLE_CPU=$(cpu_pct "$t0" "$t1" "$w0" "$w1")
	IDLE_RSS=$(rss_kb "$MASQUED_PID") IDLE_SESSIONS=$(gauge masque_tunnel_sessions)
fi
stop_pid "$LOAD_PID"
forget_pid "$LOAD_PID"
IDLE_DONE=$(grep '"event":"done"' "$WORK/connectload-idle.out" || true)
masqued_stop
say "scaling measured in $((SECONDS - SCALE_START)) s"

{
	echo
	echo "scaling (masque only, one run): N clients at once, one namespace and one masque up each,"
	echo "one iperf3 TCP stream per client for ${DUR} s; a fresh masqued for each N"
	printf '%7s %8s %9s %11s %12s %6s %9s %11s %12s %6s %12s %8s %8s\n' clients sessions \
		"up Gb/s" "min/max Mb" "cpu mqd/all" failed "down Gb/s" "min/max Mb" "cpu mqd/all" failed "RSS MB" "kB/sess" "peak MB"
	printf '%.0s-' {1..125}
	echo
	printf '%s\n' "${SCALE_ROWS[@]}"
	echo "(cpu mqd/all: masqued / whole machine, % of one core; RSS MB: masqued before the clients /"
	echo " with their sessions up, before traffic; kB/sess: that growth per session; peak: masqued VmHWM"
	echo " after the traffic)"
	echo
	if [[ -n $HS ]]; then
		jq -r --arg cpu "$HS_CPU" --arg m "$HS_M" '
			"session set-up (QUIC + TLS 1.3 full handshake, CONNECT-IP, address assignment, close), \(.workers) workers, \(.duration_limit_s) s:",
			"  \(.rate | floor) sessions/s (\(.ok) ok, \(.failed) failed); set-up p50 \(.p50_ms) ms, p90 \(.p90_ms) ms, p99 \(.p99_ms) ms",
			"  masqued CPU \($cpu)% of one core, machine \($m)% (the load tool shares the CPUs):",
			"  \(if ($cpu | tonumber) > 0 then (.rate / (($cpu | tonumber) / 100) | floor | tostring) else "-" end) sessions per masqued CPU-second",
			(if .errors then "  errors: \(.errors | to_entries | map("\(.value)× \(.key)") | join("; "))" else empty end)' <<<"$HS"
	else
		echo "session set-up: connectload failed (see its log)"
	fi
	echo
	if [[ -n $IDLE_READY ]]; then
		jq -r --arg r0 "$IDLE_RSS0" --arg r1 "$IDLE_RSS" --arg g "$IDLE_SESSIONS" --arg cpu "$IDLE_CPU" --arg n "$IDLE_N" '
			"idle sessions: \(.ok) of \($n) opened in \(.seconds * 10 | floor / 10) s (\(.rate | floor)/s, \(.failed) failed); masqued reports \($g) sessions",
			"  masqued RSS \(($r0 | tonumber) / 1024 * 10 | floor / 10) MB before, \(($r1 | tonumber) / 1024 * 10 | floor / 10) MB with them: \(if .ok > 0 then ((($r1 | tonumber) - ($r0 | tonumber)) / .ok * 10 | floor / 10 | tostring) else "-" end) kB per session; masqued CPU while idle \($cpu)%",
			(if .errors then "  errors: \(.errors | to_entries | map("\(.value)× \(.key)") | join("; "))" else empty end)' <<<"$IDLE_READY"
		[[ -z $IDLE_DONE ]] || jq -r '"  still open when released: \(.open)"' <<<"$IDLE_DONE"
	else
		echo "idle sessions: connectload did not report ready (see its log)"
	fi
}
