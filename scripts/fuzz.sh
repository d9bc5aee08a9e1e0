#!/usr/bin/env bash
# fuzz.sh: run every fuzz target in the module for longer than CI does.
#
#   scripts/fuzz.sh [DURATION] [PATTERN]
#
# DURATION is per target (go's -fuzztime, default 60s); PATTERN, if given,
# keeps only targets whose name matches it (grep -E). New crashers land in
# the package's testdata/fuzz/FuzzX/ like any go test -fuzz run: commit the
# ones that found a bug, with the fix, as seeds. Exits non-zero if any
# target failed. No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
duration=${1:-60s}
pattern=${2:-.}
[[ $duration =~ ^[0-9]+(s|m|h|x)$ ]] || { echo "fuzz.sh: DURATION $duration: want e.g. 30s, 10m or 1000x" >&2; exit 2; }

mapfile -t targets < <(grep -r --include='*_test.go' --exclude-dir=.git --exclude-dir=testdata -o '^func Fuzz[A-Za-z0-9_]*' . |
	while IFS=: read -r file decl; do echo "$(dirname "$file") ${decl#func }"; done | sort -u | grep -E -- "$pattern" || true)
if ((${#targets[@]} == 0)); then
	echo "fuzz.sh: no fuzz target matches $pattern" >&2
	exit 2
fi
failed=()
for tgt in "${targets[@]}"; do
	read -r dir fn <<<"$tgt"
	echo "=== $fn in $dir ($duration)"
	if ! go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$duration" "$dir/"; then
		failed+=("$fn")
	fi
done
echo "fuzz targets run: ${#targets[@]}"
if ((${#failed[@]})); then
	echo "fuzz.sh: failed: ${failed[*]}" >&2
	exit 1
fi
