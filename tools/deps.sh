#!/bin/sh
# Installs the Debian packages qpk needs to build and test, if they are missing.
set -e
pkgs="build-essential cmake pkg-config zlib1g-dev libcjson-dev libxxhash-dev unicode-data bzip2"
missing=""
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends $missing ||
  { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends $missing; }
