# Shared helpers for the ops scripts: one-line errors, bounded waits, paths.
# Sourced, never executed.
set -euo pipefail

# Everything the scripts create (data directories, logs, password files) is readable by the owner only: the
# state holds customer addresses, message bodies and credentials.
umask 077

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${CAMPAIGNS_STATE_DIR:-$REPO_ROOT/.state}"
mkdir -p "$STATE_DIR"
# Others may traverse the state directory but not list or read it: as root, PostgreSQL runs as the 'postgres'
# OS user and must reach its own (0700) directory inside; every other entry is 0700/0600.
chmod 711 "$STATE_DIR" 2>/dev/null || true  # (a test may run the scripts with a PATH that lacks chmod)

die() { echo "error: $*" >&2; exit 1; }
info() { echo "==> $*" >&2; }

# wait_until SECONDS DESCRIPTION CMD...: run CMD until it succeeds or the deadline passes.
wait_until() {
  local timeout=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
      return 1
    fi
    sleep 0.2
  done
}

# port_in_use PORT: true when something listens on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else die "need root to run '$*' (no sudo); install it by hand"
  fi
}
