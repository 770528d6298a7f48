#!/usr/bin/env bash
# Make sure a headless Chromium is available for the report's browser test (tests/render/).
# Prints the browser's path. Installs Debian's `chromium` with apt-get when it is missing and
# we may (root, or passwordless sudo); exits 1 with a reason otherwise.
set -euo pipefail

find_browser() {
  for name in "${CHROMIUM:-}" chromium chromium-browser google-chrome-stable google-chrome; do
    [[ -n "$name" ]] && command -v "$name" >/dev/null 2>&1 && { command -v "$name"; return 0; }
  done
  return 1
}

if path=$(find_browser); then
  echo "$path"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "install_chromium.sh: chromium is missing and apt-get needs root (run as root or with passwordless sudo)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium.sh: chromium is missing and this system has no apt-get; install Chromium and set CHROMIUM=/path/to/it" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# apt's lists may be absent in a fresh container; another apt run may hold the lock for a while.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
find_browser || { echo "install_chromium.sh: apt-get finished but no chromium on PATH" >&2; exit 1; }
