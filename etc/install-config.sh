#!/bin/sh
# install-config.sh SOURCE SYSCONFDIR
#
# Install SOURCE as SYSCONFDIR/backupsync.ini (below $DESTDIR when set),
# but only when that file does not exist yet: an administrator's edited
# configuration is never overwritten.
set -eu

if [ "$#" -ne 2 ]; then
	echo "usage: $0 SOURCE SYSCONFDIR" >&2
	exit 64
fi
src=$1
sysconfdir=$2

# SYSCONFDIR is absolute (prefix / sysconfdir). DESTDIR, when set, is
# prepended like meson does for every installed file; meson exports it
# with MESON_INSTALL_DESTDIR_PREFIX (= DESTDIR + prefix).
case $sysconfdir in
/*) ;;
*)
	echo "$0: SYSCONFDIR must be absolute: $sysconfdir" >&2
	exit 64
	;;
esac
destdir=${DESTDIR:-}
if [ -n "$destdir" ]; then
	case $destdir in
	/*) ;;
	*) destdir=$(pwd)/$destdir ;;
	esac
fi
dir=$destdir$sysconfdir
dest=$dir/backupsync.ini

say() {
	if [ -z "${MESON_INSTALL_QUIET:-}" ]; then
		echo "$@"
	fi
}

if [ -e "$dest" ] || [ -L "$dest" ]; then
	say "Keeping existing $dest"
	exit 0
fi
if [ -n "${MESON_INSTALL_DRY_RUN:-}" ]; then
	say "Would install $src to $dest"
	exit 0
fi

say "Installing $src to $dir"
mkdir -p "$dir"
tmp=$dir/.backupsync.ini.$$
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
chmod 0644 "$tmp"
# Another installer may have created the file meanwhile: keep theirs.
if [ -e "$dest" ] || [ -L "$dest" ]; then
	say "Keeping existing $dest"
	exit 0
fi
mv "$tmp" "$dest"
trap - EXIT
