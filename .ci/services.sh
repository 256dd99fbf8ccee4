#!/usr/bin/env bash
# External services the real-backend tests need, started without systemd.
#
# Sourced by .ci/run (so the exports below reach the test commands), or run on its own:
#   bash .ci/services.sh          # installs and starts everything, prints the URLs
#   source .ci/services.sh        # same, and exports DATABASE_URL into this shell
#
# Idempotent: a package already installed is not reinstalled, a server already answering is
# left alone, and the role and database are created only when missing. Each service has its
# own functions.
#
# PostgreSQL: Debian's packaged cluster (pg_ctlcluster), listening on 127.0.0.1:5432, with a
# password-authenticated role and database `cruster`:
#   DATABASE_URL=postgres://cruster:cruster@127.0.0.1:5432/cruster
#
# etcd: Debian's etcd-server (and etcdctl from etcd-client; protoc from protobuf-compiler,
# which the etcd-client crate's build script runs), listening on 127.0.0.1:2379 with its data
# under a temporary folder, started by .ci/etcd-ctl.sh unless an etcd already answers there:
#   ETCD_ENDPOINTS=http://127.0.0.1:2379
#   CRUSTER_ETCD_DATA_DIR, CRUSTER_ETCD_PID  (tests stop and start it with .ci/etcd-ctl.sh)
#
# A browser for the web console's test: Debian's chromium and chromium-driver (the test
# starts chromedriver itself, headless, and fails instead of skipping when CI=true):
#   CHROMEDRIVER=/usr/bin/chromedriver, CHROMIUM=/usr/bin/chromium

CRUSTER_PG_HOST=127.0.0.1
CRUSTER_PG_PORT=5432
CRUSTER_PG_USER=cruster
CRUSTER_PG_PASSWORD=cruster
CRUSTER_PG_DATABASE=cruster

services_log() {
  echo "[services] $*" >&2
}

# Installs Debian packages that are missing (apt-get update runs once, only if needed).
services_apt_install() {
  local missing=()
  local package
  for package in "$@"; do
    if [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]; then
      missing+=("$package")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  services_log "installing ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq || return 1
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null || return 1
}

# Runs a command as the `postgres` operating-system user.
services_as_postgres() {
  if [ "$(id -un)" = "postgres" ]; then
    "$@"
  elif [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    sudo -u postgres "$@"
  fi
}

services_postgres_ready() {
  pg_isready -q -h "$CRUSTER_PG_HOST" -p "$CRUSTER_PG_PORT"
}

# Waits up to 30 s for PostgreSQL to accept connections on 127.0.0.1.
services_postgres_wait() {
  local tries=0
  until services_postgres_ready; do
    tries=$((tries + 1))
    if [ "$tries" -ge 150 ]; then
      services_log "PostgreSQL did not become ready on $CRUSTER_PG_HOST:$CRUSTER_PG_PORT within 30 s"
      return 1
    fi
    sleep 0.2
  done
}

# Starts the packaged cluster listening on our port, unless a server already answers there.
services_postgres_start() {
  if services_postgres_ready; then
    services_log "PostgreSQL already running on $CRUSTER_PG_HOST:$CRUSTER_PG_PORT"
    return 0
  fi
  # The cluster whose port is ours (Debian creates `<version> main` on 5432 at install time).
  local version="" cluster=""
  read -r version cluster < <(pg_lsclusters --no-header | awk -v port="$CRUSTER_PG_PORT" '$3 == port { print $1, $2; exit }')
  if [ -z "${version:-}" ]; then
    version=$(pg_lsclusters --no-header | awk 'NR == 1 { print $1 }')
    if [ -z "$version" ]; then
      version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    fi
    cluster=main
    services_log "creating PostgreSQL cluster $version/$cluster on port $CRUSTER_PG_PORT"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
      sudo=(sudo)
    fi
    "${sudo[@]}" pg_createcluster --port "$CRUSTER_PG_PORT" "$version" "$cluster" >/dev/null || return 1
  fi
  services_log "starting PostgreSQL cluster $version/$cluster"
  if [ "$(id -u)" -eq 0 ]; then
    pg_ctlcluster "$version" "$cluster" start || return 1
  else
    services_as_postgres pg_ctlcluster "$version" "$cluster" start || return 1
  fi
  services_postgres_wait
}

# Creates the `cruster` role and database when they are missing (as the postgres superuser).
services_postgres_create_database() {
  local psql=(services_as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$CRUSTER_PG_PORT" -d postgres)
  if [ "$("${psql[@]}" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$CRUSTER_PG_USER'")" != "1" ]; then
    services_log "creating role $CRUSTER_PG_USER"
    "${psql[@]}" -c "CREATE ROLE $CRUSTER_PG_USER LOGIN PASSWORD '$CRUSTER_PG_PASSWORD' CREATEDB" || return 1
  fi
  if [ "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$CRUSTER_PG_DATABASE'")" != "1" ]; then
    services_log "creating database $CRUSTER_PG_DATABASE"
    "${psql[@]}" -c "CREATE DATABASE $CRUSTER_PG_DATABASE OWNER $CRUSTER_PG_USER" || return 1
  fi
}

# The test suites run runner processes and conformance suites side by side, each with its
# own pools: 100 connections (the packaged default) is too tight. Raised once, then kept.
services_postgres_connections() {
  local psql=(services_as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$CRUSTER_PG_PORT" -d postgres)
  local current
  current=$("${psql[@]}" -tAc "SHOW max_connections") || return 1
  if [ "$current" -ge 300 ]; then
    return 0
  fi
  services_log "raising PostgreSQL max_connections from $current to 300 (restart)"
  "${psql[@]}" -c "ALTER SYSTEM SET max_connections = 300" || return 1
  local version="" cluster=""
  read -r version cluster < <(pg_lsclusters --no-header | awk -v port="$CRUSTER_PG_PORT" '$3 == port { print $1, $2; exit }')
  if [ -z "${version:-}" ]; then
    services_log "no PostgreSQL cluster on port $CRUSTER_PG_PORT to restart"
    return 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    pg_ctlcluster "$version" "$cluster" restart || return 1
  else
    services_as_postgres pg_ctlcluster "$version" "$cluster" restart || return 1
  fi
  services_postgres_wait
}

services_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    services_apt_install postgresql || return 1
  fi
  services_postgres_start || return 1
  services_postgres_connections || return 1
  services_postgres_create_database || return 1
  export DATABASE_URL="postgres://$CRUSTER_PG_USER:$CRUSTER_PG_PASSWORD@$CRUSTER_PG_HOST:$CRUSTER_PG_PORT/$CRUSTER_PG_DATABASE"
  echo "DATABASE_URL=$DATABASE_URL"
}

# The folder of this script, whether it is run or sourced.
services_ci_dir() {
  cd "$(dirname "${BASH_SOURCE[0]}")" && pwd
}

services_etcd() {
  if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
    services_apt_install etcd-server etcd-client || return 1
  fi
  if ! command -v protoc >/dev/null 2>&1; then
    services_apt_install protobuf-compiler || return 1
  fi
  local ci_dir
  ci_dir=$(services_ci_dir) || return 1
  bash "$ci_dir/etcd-ctl.sh" ensure || return 1
  local status
  status=$(bash "$ci_dir/etcd-ctl.sh" status) || return 1
  CRUSTER_ETCD_PID=$(printf '%s\n' "$status" | sed -n 's/^CRUSTER_ETCD_PID=//p')
  CRUSTER_ETCD_DATA_DIR=$(printf '%s\n' "$status" | sed -n 's/^CRUSTER_ETCD_DATA_DIR=//p')
  export CRUSTER_ETCD_PID CRUSTER_ETCD_DATA_DIR
  export ETCD_ENDPOINTS="http://127.0.0.1:2379"
  echo "ETCD_ENDPOINTS=$ETCD_ENDPOINTS"
}

# Installs headless Chromium and its WebDriver server; starts nothing (the test does).
services_browser() {
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    services_apt_install chromium chromium-driver || return 1
  fi
  export CHROMIUM
  CHROMIUM=$(command -v chromium)
  export CHROMEDRIVER
  CHROMEDRIVER=$(command -v chromedriver)
  echo "CHROMEDRIVER=$CHROMEDRIVER"
}

services_main() {
  services_postgres || return 1
  services_etcd || return 1
  services_browser || return 1
}

# Every step checks its own status (`|| return 1`) instead of relying on `set -e`, which a
# sourcing shell may not have and which bash ignores inside an `if` condition anyway.
if ! services_main; then
  services_log "starting the services failed"
  # `return` when sourced, `exit` when executed.
  return 1 2>/dev/null || exit 1
fi
