#!/usr/bin/env bash
# A project-private PostgreSQL cluster on 127.0.0.1 (own port, data under .state/postgres), made with
# initdb/pg_ctl from the OS packages. Usage: ops/postgres/postgres.sh start|stop|status
# Idempotent: start on a running cluster only makes sure the role and database exist.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PORT="${CAMPAIGNS_PG_PORT:-15432}"
DB_USER="${CAMPAIGNS_PG_USER:-campaigns}"
DB_PASSWORD="${CAMPAIGNS_PG_PASSWORD:-campaigns}"
DB_NAME="${CAMPAIGNS_PG_DB:-campaigns}"
DATA="$STATE_DIR/postgres"

# As root, the server runs as the 'postgres' OS user, which may not be able to reach a checkout under a
# private directory (mktemp -d makes 0700 ones). Then the cluster lives in /var/tmp, one per checkout,
# and .state/postgres links to it.
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$STATE_DIR" 2>/dev/null; then
  real_data="/var/tmp/campaigns-postgres-$(echo -n "$REPO_ROOT" | md5sum | cut -c1-12)"
  [ -L "$DATA" ] || { rm -rf "$DATA"; ln -s "$real_data" "$DATA"; }
  DATA="$real_data"
fi

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

install_if_missing() {
  find_bin >/dev/null && return 0
  command -v apt-get >/dev/null || die "PostgreSQL is not installed and apt-get is missing: install PostgreSQL 15+ server packages"
  info "installing PostgreSQL from the OS packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
    || die "apt-get update failed: is the Debian package mirror reachable?"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
    || die "apt-get install postgresql failed"
  find_bin >/dev/null || die "postgresql installed but no pg_ctl under /usr/lib/postgresql/*/bin"
}

# initdb and postgres refuse to run as root: run them as the 'postgres' OS user then.
run_pg() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

psql_admin() { run_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

is_ready() { "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -q; }

start() {
  install_if_missing
  BIN=$(find_bin)
  if is_ready; then ensure_db; info "postgres already running on 127.0.0.1:$PORT"; return 0; fi
  port_in_use "$PORT" && die "port 127.0.0.1:$PORT is already taken by another process: stop it or set CAMPAIGNS_PG_PORT"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    info "initialising a private cluster in $DATA"
    mkdir -p "$DATA"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA"
    chmod 700 "$DATA"
    run_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$STATE_DIR/postgres-initdb.log" 2>&1 \
      || { tail -n 5 "$STATE_DIR/postgres-initdb.log" >&2; die "initdb failed (see .state/postgres-initdb.log)"; }
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
max_connections = 200
shared_buffers = 256MB
# A development/test cluster: durability traded for speed is fine here, not in production.
synchronous_commit = off
fsync = off
full_page_writes = off
max_wal_size = 2GB
CONF
  fi
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$DATA"
  run_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start >/dev/null \
    || { tail -n 5 "$DATA/server.log" >&2; die "postgres did not start on 127.0.0.1:$PORT (see $DATA/server.log)"; }
  wait_until 30 "postgres" is_ready || die "postgres did not accept connections on 127.0.0.1:$PORT within 30s"
  ensure_db
  info "postgres ready on 127.0.0.1:$PORT (database $DB_NAME)"
}

ensure_db() {
  if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$DB_USER'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $DB_USER LOGIN SUPERUSER PASSWORD '$DB_PASSWORD'" >/dev/null
  fi
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
  fi
}

stop() {
  BIN=$(find_bin) || { info "postgres not installed"; return 0; }
  if [ -f "$DATA/postmaster.pid" ]; then
    run_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null || die "pg_ctl stop failed"
  fi
  info "postgres stopped"
}

status() {
  BIN=$(find_bin) || { echo "postgres: not installed"; return 3; }
  if is_ready; then echo "postgres $("$BIN/postgres" --version | awk '{print $3}'): running on 127.0.0.1:$PORT"
  else echo "postgres: stopped"; return 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
