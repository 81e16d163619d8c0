#!/usr/bin/env bash
# Installs what zforce needs from Debian 12 packages (only what is missing) and
# builds into build/. Idempotent and quiet when everything is already there.
#   scripts/setup.sh            install + configure + build (debug, warnings as errors)
#   scripts/setup.sh --no-build only install packages
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ pkg-config meson ninja-build libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
          libcli11-dev doctest-dev libsqlite3-dev libtomlplusplus-dev nlohmann-json3-dev
          libjemalloc-dev tzdata procps sqlite3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq >/dev/null
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${1:-}" = "--no-build" ] && exit 0

builddir=${ZFORCE_BUILD:-build}
if [ ! -f "$builddir/build.ninja" ]; then
  meson setup "$builddir" --buildtype=debugoptimized >/dev/null
fi
ninja -C "$builddir" >"$builddir/last-build.log" 2>&1 || { cat "$builddir/last-build.log"; echo "setup: build failed"; exit 1; }
