#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the dashboard's browser test (tests/api/test_dashboard_browser.py),
# from the OS packages (Debian's `chromium` and `chromium-driver`), like ops/postgres/postgres.sh installs
# PostgreSQL. Usage: ops/chromium/chromium.sh install|status
# `install` is idempotent (a no-op when both are there) and prints the two paths on success:
#   CHROMIUM=/usr/bin/chromium
#   CHROMEDRIVER=/usr/bin/chromedriver
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

find_browser() { command -v chromium || command -v chromium-browser || command -v google-chrome || true; }
find_driver() { command -v chromedriver || { [ -x /usr/lib/chromium/chromedriver ] && echo /usr/lib/chromium/chromedriver; } || true; }

report() {
  local browser driver
  browser=$(find_browser); driver=$(find_driver)
  [ -n "$browser" ] && [ -n "$driver" ] || return 1
  echo "CHROMIUM=$browser"
  echo "CHROMEDRIVER=$driver"
}

install() {
  report && return 0
  command -v apt-get >/dev/null || die "chromium is not installed and apt-get is missing: install Chromium and its chromedriver"
  info "installing chromium and chromium-driver from the OS packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
    || die "apt-get update failed: is the Debian package mirror reachable?"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || die "apt-get install chromium chromium-driver failed"
  report || die "chromium-driver installed but no chromium/chromedriver on PATH"
}

case "${1:-}" in
  install) install ;;
  status) report || { echo "chromium or chromedriver missing (ops/chromium/chromium.sh install)"; exit 1; } ;;
  *) die "usage: $0 install|status" ;;
esac
