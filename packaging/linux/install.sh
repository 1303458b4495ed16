#!/bin/sh
# Installs the portable OnAir into PREFIX (default ~/.local; /usr/local for everyone, as root):
# the binary, the desktop entry and icons (so OnAir appears in the menu), man pages and shell
# completions. `./install.sh --uninstall [PREFIX]` removes exactly those files again.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mode=install
if [ "${1:-}" = "--uninstall" ]; then mode=uninstall; shift; fi
prefix=${1:-$HOME/.local}
cd "$here"
find bin share -type f | while read -r f; do
  if [ "$mode" = install ]; then
    mkdir -p "$prefix/$(dirname "$f")"
    cp "$f" "$prefix/$f"
  else
    rm -f "$prefix/$f"
  fi
done
if [ "$mode" = install ]; then
  chmod 755 "$prefix/bin/onair"
  echo "installed OnAir into $prefix (make sure $prefix/bin is on your PATH)"
else
  echo "removed OnAir from $prefix"
fi
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$prefix/share/applications" 2>/dev/null || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$prefix/share/icons/hicolor" 2>/dev/null || true
