#!/usr/bin/env bash
# test.sh: everything CI checks, as root (the e2e tests need network
# namespaces):
#
#   sudo scripts/test.sh
#
# Installs missing prerequisites, then: gofmt, go vet, go test -race over the
# whole module (e2e included) and a short run of every fuzz target. Every
# phase runs even if an earlier one failed; the script exits non-zero if any
# did. Takes about 10 minutes on 2 cores.
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
	echo "test.sh: must run as root (the e2e tests create network namespaces): sudo scripts/test.sh" >&2
	exit 1
fi
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
START=$SECONDS
section() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - START)); }

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ping >/dev/null || need+=(iputils-ping)
command -v ethtool >/dev/null || need+=(ethtool)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v dbus-daemon >/dev/null || need+=(dbus) # tun/resolvedtest: a private system bus
command -v systemd-analyze >/dev/null || need+=(systemd) # cmd/masqued: systemd-analyze verify of the units
command -v gcc >/dev/null || need+=(gcc libc6-dev) # go test -race needs cgo
if ((${#need[@]})); then
	section "installing ${need[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
command -v go >/dev/null || { echo "test.sh: go not found (expected in /usr/local/go/bin)" >&2; exit 1; }
go version

section "go mod download"
go mod download

failed=() # names of the phases that failed

section "gofmt"
mapfile -t gofiles < <(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*')
unformatted=$(gofmt -l "${gofiles[@]}")
if [[ -n $unformatted ]]; then
	echo "test.sh: not gofmt-ed:" >&2
	echo "$unformatted" >&2
	failed+=(gofmt)
fi

section "go vet"
go vet ./... || failed+=("go vet")

# Every package with the race detector, the end-to-end tests on their own
# afterwards: they measure loss and timing through real namespaces, which
# other packages' tests running on the same two cores would distort.
section "go test -race (all packages but e2e)"
mapfile -t unitpkgs < <(go list ./... | grep -v '/e2e')
go test -race -count=1 -timeout 20m "${unitpkgs[@]}" || failed+=("go test")
section "go test -race (e2e)"
go test -race -count=1 -timeout 20m ./e2e/... || failed+=("go test e2e")

section "fuzz"
# Every fuzz target, a few seconds each: PACKAGE_DIR FUNC per line.
mapfile -t targets < <(grep -r --include='*_test.go' --exclude-dir=.git --exclude-dir=testdata -o '^func Fuzz[A-Za-z0-9_]*' . |
	while IFS=: read -r file decl; do echo "$(dirname "$file") ${decl#func }"; done | sort -u)
# Keep the fuzz phase within about 4 minutes whatever the number of targets
# (each run also compiles its package with coverage instrumentation).
fuzztime=5
if ((${#targets[@]} > 24 || SECONDS - START > 540)); then
	fuzztime=2
fi
for tgt in "${targets[@]}"; do
	read -r dir fn <<<"$tgt"
	echo "--- $fn in $dir (${fuzztime}s)"
	out=$(go test -run='^$' -fuzz="^${fn}\$" -fuzztime="${fuzztime}s" "$dir/" 2>&1) && { echo "$out" | tail -n 1; continue; }
	echo "$out"
	# The fuzzing engine's own timeout on a loaded machine ("context
	# deadline exceeded", no failing input) is not a finding: once more.
	if grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input' <<<"$out"; then
		echo "--- $fn in $dir again: the fuzzing engine timed out, found nothing"
		go test -run='^$' -fuzz="^${fn}\$" -fuzztime="${fuzztime}s" "$dir/" && continue
	fi
	echo "test.sh: FAIL: fuzz target $fn in $dir" >&2
	failed+=("fuzz $fn")
done
echo "fuzz targets run: ${#targets[@]}"

if ((${#failed[@]})); then
	section "FAILED: $(printf '%s; ' "${failed[@]}")"
	exit 1
fi
section "all passed"
