#!/usr/bin/env bash
# install.sh: build masqued and masque and install them with their systemd
# units. As root (no sudo needed):
#
#   scripts/install.sh                     # binaries into /usr/local/bin
#   PREFIX=/opt/masque scripts/install.sh  # into /opt/masque/bin
#
# It installs the binaries, masqued.service and masque@.service into
# /etc/systemd/system (with ExecStart pointing at the binaries), and
# creates /etc/masqued (the server's configuration) and /etc/masque (the
# client's profiles), mode 0700. It enables and starts nothing. Running it
# again updates what changed and says what it left alone.
#
# DESTDIR=DIR installs under DIR instead of / (for packages, and the test);
# then root is not needed and systemd is not told.
set -euo pipefail

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BINDIR=$PREFIX/bin
UNITDIR=/etc/systemd/system

die() {
	echo "install.sh: $*" >&2
	exit 1
}

if [[ -z $DESTDIR && $EUID -ne 0 ]]; then
	die "must run as root (it writes $BINDIR, $UNITDIR and /etc): run it from a root shell"
fi
[[ $PREFIX == /* ]] || die "PREFIX must be an absolute path, not $PREFIX"
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || die "go not found (expected in PATH or /usr/local/go/bin)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -buildvcs=auto stamps the revision that --version prints where git can
# tell it, whatever GOFLAGS says.
for cmd in masqued masque; do
	go build -trimpath -buildvcs=auto -o "$tmp/$cmd" "./cmd/$cmd"
done

# put SRC DST MODE: install SRC as DST unless DST has the same content,
# then set MODE; say which.
put() {
	local src=$1 dst=$2 mode=$3
	if [[ -f $dst ]] && cmp -s "$src" "$dst"; then
		chmod "$mode" "$dst"
		echo "unchanged $dst"
	else
		install -D -m "$mode" "$src" "$dst"
		echo "installed $dst"
	fi
}

for cmd in masqued masque; do
	put "$tmp/$cmd" "$DESTDIR$BINDIR/$cmd" 0755
	echo "          $("$DESTDIR$BINDIR/$cmd" --version)"
done

# Man pages, generated from the commands themselves.
MANDIR=$PREFIX/share/man/man1
for cmd in masqued masque; do
	"$tmp/$cmd" man "$tmp/man" >/dev/null
done
for page in "$tmp"/man/*.1; do
	put "$page" "$DESTDIR$MANDIR/${page##*/}" 0644
done

for unit in masqued.service masque@.service; do
	sed "s|/usr/local/bin/|$BINDIR/|g" "scripts/systemd/$unit" >"$tmp/$unit"
	put "$tmp/$unit" "$DESTDIR$UNITDIR/$unit" 0644
done

# Configuration directories: tokens, keys and profiles are secrets.
for dir in /etc/masqued /etc/masque; do
	if [[ -d $DESTDIR$dir ]]; then
		if [[ $(stat -c %a "$DESTDIR$dir") != 700 ]]; then
			chmod 0700 "$DESTDIR$dir"
			echo "chmod 0700 $DESTDIR$dir (it was open to group or others)"
		else
			echo "unchanged $DESTDIR$dir"
		fi
	else
		install -d -m 0700 "$DESTDIR$dir"
		echo "created $DESTDIR$dir (mode 0700)"
	fi
done

if [[ -z $DESTDIR && -d /run/systemd/system ]]; then
	systemctl daemon-reload
	echo "systemctl daemon-reload"
elif [[ -z $DESTDIR ]]; then
	echo "systemd is not running: nothing told it about the units"
fi

cat <<EOF

Nothing is enabled. Next:
  server: write /etc/masqued/masqued.conf, check it with
            $BINDIR/masqued config check --config /etc/masqued/masqued.conf
          then: systemctl enable --now masqued
  client: write /etc/masque/NAME.conf, then: systemctl enable --now masque@NAME
EOF
