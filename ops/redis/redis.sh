#!/usr/bin/env bash
# redis-server for the BullMQ baseline of `make bench`, from the OS packages.
# Usage: ops/redis/redis.sh install|status
#
# Only the binary is installed here: the benchmark harness starts its own redis-server on a free loopback
# port with a private directory and no persistence, and stops it afterwards (bench/baseline_bullmq.py).
# Idempotent: install with redis-server already on PATH does nothing.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

install() {
  command -v redis-server >/dev/null && return 0
  command -v apt-get >/dev/null \
    || die "redis-server is not installed and apt-get is missing: install redis-server (the BullMQ baseline of make bench needs it), or leave that baseline out: make bench BENCH_ARGS='e2e latency expansion simulator cron limit'"
  info "installing redis-server from the OS packages (the BullMQ baseline of make bench)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
    || die "apt-get update failed: is the Debian package mirror reachable?"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
    || die "apt-get install redis-server failed"
  command -v redis-server >/dev/null || die "redis-server installed but not on PATH"
  # Where systemd runs, the package also starts a system-wide redis on 6379; the harness does not use it.
}

status() {
  if command -v redis-server >/dev/null; then echo "redis-server: $(redis-server --version | awk '{print $3}')"
  else echo "redis-server: not installed (make bench installs it)"; return 3; fi
}

case "${1:-}" in
  install) install ;;
  status) status ;;
  *) die "usage: $0 install|status" ;;
esac
