#!/usr/bin/env bash
# A project-private PostgreSQL cluster on 127.0.0.1 (own port, data under .state/postgres), made with
# initdb/pg_ctl from the OS packages. Usage: ops/postgres/postgres.sh start|stop|status|durability [on|off]
#
# The cluster starts fast and not durable (fsync, synchronous_commit and full_page_writes off: a test cluster).
# `durability on` makes it durable as production runs it (the three back to PostgreSQL's defaults, through
# ALTER SYSTEM and a reload, no restart); `durability off` goes back; `durability` alone prints the state.
# The benchmark harness turns it on for its headline figures.
#
# Least privilege, as in production (docs/security.md): every connection authenticates with scram-sha-256
# (pg_hba.conf; a wrong password is refused), the superuser 'postgres' has a random password kept in
# .state/postgres-superuser.password (0600), and the application has two roles:
#   $DB_OWNER (campaigns_owner): owns the database and its schema, runs the migrations (CREATEDB, for tests);
#   $DB_USER  (campaigns):       the application: reads and writes data, owns nothing, no superuser.
# Idempotent: start on a running cluster converges it to this (an older cluster with 'trust' and a superuser
# application role included).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PORT="${CAMPAIGNS_PG_PORT:-15432}"
DB_USER="${CAMPAIGNS_PG_USER:-campaigns}"
DB_PASSWORD="${CAMPAIGNS_PG_PASSWORD:-campaigns}"
DB_OWNER="${CAMPAIGNS_PG_OWNER:-campaigns_owner}"
DB_OWNER_PASSWORD="${CAMPAIGNS_PG_OWNER_PASSWORD:-campaigns_owner}"
DB_NAME="${CAMPAIGNS_PG_DB:-campaigns}"
DATA="$STATE_DIR/postgres"
SUPERUSER_PASSWORD_FILE="$STATE_DIR/postgres-superuser.password"
SUPERUSER_PGPASS="$STATE_DIR/postgres-superuser.pgpass"
# Where the 'postgres' OS user reads them (initdb --pwfile, psql's PGPASSFILE): the same files, unless the
# checkout is out of its reach (below), then owner-only copies next to the relocated cluster.
PG_SECRETS="$STATE_DIR"

for name in "$DB_USER" "$DB_OWNER" "$DB_NAME"; do
  [[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]] || die "'$name': role and database names must be plain identifiers ([a-z_][a-z0-9_]*)"
done

# As root, the server runs as the 'postgres' OS user, which may not be able to reach a checkout under a
# private directory (mktemp -d makes 0700 ones). Then the cluster lives in /var/tmp, one per checkout,
# and .state/postgres links to it.
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$STATE_DIR" 2>/dev/null; then
  real_data="/var/tmp/campaigns-postgres-$(echo -n "$REPO_ROOT" | md5sum | cut -c1-12)"
  if [ ! -L "$DATA" ] && [ -f "$DATA/PG_VERSION" ]; then
    die "$DATA holds a cluster the 'postgres' OS user cannot reach (a parent directory is not traversable): make it traversable (chmod o+x) or move the cluster; nothing was deleted"
  fi
  [ -L "$DATA" ] || { rm -rf "$DATA"; ln -s "$real_data" "$DATA"; }
  DATA="$real_data"
  PG_SECRETS="${real_data}-secrets"
fi
PG_PWFILE="$PG_SECRETS/postgres-superuser.password"
PG_PGPASS="$PG_SECRETS/postgres-superuser.pgpass"

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

# psql as the superuser, over TCP with its password from a 0600 pgpass file (never on a command line). SQL
# that carries a password comes on stdin, not in -c arguments (the process list shows arguments).
psql_admin() {
  local db=postgres
  if [ "${1:-}" = "--db" ]; then db=$2; shift 2; fi
  run_pg env PGPASSFILE="$PG_PGPASS" "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d "$db" \
    -v ON_ERROR_STOP=1 -qtA "$@"
}

superuser_password() {
  # Made once, random, 0600 (umask 077); the pgpass file holds the same for psql. A cluster from before these
  # files existed has 'trust' until ensure_db sets this password and rewrites pg_hba.conf.
  [ -s "$SUPERUSER_PASSWORD_FILE" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$SUPERUSER_PASSWORD_FILE"
  printf '127.0.0.1:%s:*:postgres:%s\n' "$PORT" "$(cat "$SUPERUSER_PASSWORD_FILE")" >"$SUPERUSER_PGPASS"
  if [ "$(id -u)" = 0 ]; then chown postgres "$SUPERUSER_PASSWORD_FILE" "$SUPERUSER_PGPASS"; fi
  if [ "$PG_SECRETS" != "$STATE_DIR" ]; then
    mkdir -p "$PG_SECRETS"
    cp "$SUPERUSER_PASSWORD_FILE" "$SUPERUSER_PGPASS" "$PG_SECRETS/"
    chown -R postgres "$PG_SECRETS"
    chmod 700 "$PG_SECRETS"
    chmod 600 "$PG_SECRETS"/*
  fi
}

# A SQL string literal ('...' with quotes doubled).
sql_literal() { printf "'%s'" "${1//\'/\'\'}"; }

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
    superuser_password
    run_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
      --pwfile="$PG_PWFILE" -E UTF8 --locale=C.UTF-8 >"$STATE_DIR/postgres-initdb.log" 2>&1 \
      || { tail -n 5 "$STATE_DIR/postgres-initdb.log" >&2; die "initdb failed (see .state/postgres-initdb.log)"; }
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
password_encryption = 'scram-sha-256'
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
  superuser_password
  # A cluster made before scram: 'trust' still lets the superuser in; give it its password first.
  if grep -qE '^[^#]*[[:space:]]trust[[:space:]]*$' "$DATA/pg_hba.conf" 2>/dev/null; then
    psql_admin <<SQL >/dev/null
SET password_encryption = 'scram-sha-256';
ALTER ROLE postgres PASSWORD $(sql_literal "$(cat "$SUPERUSER_PASSWORD_FILE")");
SQL
  fi
  # Roles (passwords re-set every time, so they are SCRAM hashes even on a cluster that had md5 or none).
  psql_admin <<SQL >/dev/null
SET password_encryption = 'scram-sha-256';
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_OWNER') THEN CREATE ROLE $DB_OWNER LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN CREATE ROLE $DB_USER LOGIN; END IF;
END \$\$;
ALTER ROLE $DB_OWNER LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD $(sql_literal "$DB_OWNER_PASSWORD");
ALTER ROLE $DB_USER LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD $(sql_literal "$DB_PASSWORD");
-- Tests and the bench harness drop their databases WITH (FORCE): that ends the application's connections.
GRANT pg_signal_backend TO $DB_OWNER;
-- The bench harness starts every run right after a CHECKPOINT (bench/env.py reset_tables).
GRANT pg_checkpoint TO $DB_OWNER;
SQL
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_OWNER" >/dev/null
  fi
  # The schema owner owns the database and everything in it (an older cluster had the application role own
  # them); the application role gets data access only, now and on the tables later migrations create.
  psql_admin -c "ALTER DATABASE $DB_NAME OWNER TO $DB_OWNER" >/dev/null
  psql_admin --db "$DB_NAME" <<SQL >/dev/null
REASSIGN OWNED BY $DB_USER TO $DB_OWNER;
ALTER SCHEMA public OWNER TO pg_database_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO $DB_USER;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO $DB_USER;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO $DB_USER;
ALTER DEFAULT PRIVILEGES FOR ROLE $DB_OWNER IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO $DB_USER;
ALTER DEFAULT PRIVILEGES FOR ROLE $DB_OWNER IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO $DB_USER;
DO \$\$ BEGIN
  IF to_regclass('public.alembic_version') IS NOT NULL THEN
    REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM $DB_USER;
  END IF;
  IF to_regclass('public.audit_log') IS NOT NULL THEN REVOKE UPDATE, DELETE ON audit_log FROM $DB_USER; END IF;
END \$\$;
SQL
  write_hba
}

# Every connection authenticates with its password (scram-sha-256); no 'trust', no replication.
write_hba() {
  local hba="$DATA/pg_hba.conf" wanted
  wanted=$'# Written by ops/postgres/postgres.sh: passwords (SCRAM) for everyone, loopback only.\n'
  wanted+=$'local   all   all                  scram-sha-256\n'
  wanted+=$'host    all   all   127.0.0.1/32   scram-sha-256\n'
  wanted+=$'host    all   all   ::1/128        scram-sha-256\n'
  if [ "$(cat "$hba" 2>/dev/null)" != "${wanted%$'\n'}" ]; then
    printf '%s' "$wanted" >"$hba"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$hba"
    psql_admin -c "SELECT pg_reload_conf()" >/dev/null
    info "postgres: pg_hba.conf set to scram-sha-256 (a wrong password is refused)"
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

fsync_is() { [ "$(psql_admin -c 'SHOW fsync')" = "$1" ]; }

# ALTER SYSTEM overrides postgresql.conf; all three settings take a reload (sighup/user context), not a restart.
durability() {
  BIN=$(find_bin) || die "postgres not installed"
  is_ready || die "postgres is not running on 127.0.0.1:$PORT"
  superuser_password
  case "${1:-show}" in
    on)
      psql_admin -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" \
        -c "ALTER SYSTEM SET full_page_writes = on" -c "SELECT pg_reload_conf()" >/dev/null ;;
    off)
      psql_admin -c "ALTER SYSTEM RESET fsync" -c "ALTER SYSTEM RESET synchronous_commit" \
        -c "ALTER SYSTEM RESET full_page_writes" -c "SELECT pg_reload_conf()" >/dev/null ;;
    show) ;;
    *) die "usage: $0 durability [on|off]" ;;
  esac
  # The reload is asynchronous: wait until a new session sees it.
  case "${1:-show}" in
    on|off) wait_until 10 "postgres reload" fsync_is "$1" || die "postgres did not apply fsync=$1 within 10 s" ;;
  esac
  psql_admin -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings
                 WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  durability) durability "${2:-show}" ;;
  *) die "usage: $0 start|stop|status|durability [on|off]" ;;
esac
