#!/usr/bin/env bash
# The etcd the tests use, on 127.0.0.1:2379, without systemd.
#
#   bash .ci/etcd-ctl.sh ensure   # start one (data under a fresh temporary folder) unless one answers
#   bash .ci/etcd-ctl.sh stop     # stop it (tests use this to cut etcd off for a while)
#   bash .ci/etcd-ctl.sh start    # start it again, same command line and data dir
#   bash .ci/etcd-ctl.sh status   # print CRUSTER_ETCD_PID / CRUSTER_ETCD_DATA_DIR; exit 1 if it does not answer
#
# What was started (or found already answering) is kept in a state file, so `stop` and
# `start` work from any process, including a test whose environment still names an older pid:
#   ${CRUSTER_ETCD_STATE:-/tmp/cruster-etcd-2379.state}
# An etcd already answering that someone else started is adopted: its pid and command line
# are read from /proc, and `start` runs that command line again in its working directory.
#
# Idempotent: `ensure` and `start` do nothing when etcd answers, `stop` nothing when it is down.
set -uo pipefail

CRUSTER_ETCD_HOST=127.0.0.1
CRUSTER_ETCD_PORT=2379
CRUSTER_ETCD_PEER_PORT=2380
CRUSTER_ETCD_STATE=${CRUSTER_ETCD_STATE:-/tmp/cruster-etcd-$CRUSTER_ETCD_PORT.state}

etcd_log() {
  echo "[etcd] $*" >&2
}

etcd_healthy() {
  ETCDCTL_API=3 etcdctl --endpoints="$CRUSTER_ETCD_HOST:$CRUSTER_ETCD_PORT" \
    --command-timeout=2s endpoint health >/dev/null 2>&1
}

# Waits up to $1 seconds (default 30) for etcd to answer.
etcd_wait_healthy() {
  local limit=${1:-30} tries=0
  until etcd_healthy; do
    tries=$((tries + 1))
    if [ "$tries" -ge $((limit * 5)) ]; then
      etcd_log "etcd did not become healthy on $CRUSTER_ETCD_HOST:$CRUSTER_ETCD_PORT within ${limit} s"
      return 1
    fi
    sleep 0.2
  done
}

# The pid of an etcd process whose command line names our client port, if any.
etcd_find_pid() {
  local dir cmd
  for dir in /proc/[0-9]*; do
    [ -r "$dir/cmdline" ] || continue
    cmd=$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      etcd\ * | */etcd\ *)
        case "$cmd" in
          *":$CRUSTER_ETCD_PORT"*)
            echo "${dir#/proc/}"
            return 0
            ;;
        esac
        ;;
    esac
  done
  return 1
}

# Writes the state file for the etcd running as pid $1: its pid, data dir, working
# directory and command line (so `start` can run it again).
etcd_record() {
  local pid=$1 cwd data_dir="" previous="" arg
  local -a argv=()
  mapfile -d '' -t argv <"/proc/$pid/cmdline" || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || echo /)
  for arg in "${argv[@]}"; do
    case "$arg" in
      --data-dir=* | -data-dir=*) data_dir=${arg#*=} ;;
    esac
    if [ "$previous" = "--data-dir" ] || [ "$previous" = "-data-dir" ]; then
      data_dir=$arg
    fi
    previous=$arg
  done
  if [ -z "$data_dir" ]; then
    data_dir="default.etcd"
  fi
  case "$data_dir" in
    /*) ;;
    *) data_dir="$cwd/$data_dir" ;;
  esac
  {
    echo "CRUSTER_ETCD_PID=$pid"
    printf 'CRUSTER_ETCD_DATA_DIR=%q\n' "$data_dir"
    printf 'CRUSTER_ETCD_CWD=%q\n' "$cwd"
    printf 'CRUSTER_ETCD_LOG=%q\n' "${CRUSTER_ETCD_LOG:-${CRUSTER_ETCD_STATE%.state}.log}"
    declare -p argv | sed 's/^declare -a argv=/CRUSTER_ETCD_ARGV=/'
  } >"$CRUSTER_ETCD_STATE.tmp" && mv "$CRUSTER_ETCD_STATE.tmp" "$CRUSTER_ETCD_STATE"
}

etcd_load_state() {
  if [ ! -r "$CRUSTER_ETCD_STATE" ]; then
    return 1
  fi
  # shellcheck source=/dev/null
  . "$CRUSTER_ETCD_STATE"
}

# Starts `$@` in the background, detached from this shell, in directory $CRUSTER_ETCD_CWD,
# logging to $CRUSTER_ETCD_LOG; records it once healthy.
etcd_launch() {
  etcd_log "starting: $* (log: $CRUSTER_ETCD_LOG)"
  (cd "$CRUSTER_ETCD_CWD" && exec setsid nohup "$@" >>"$CRUSTER_ETCD_LOG" 2>&1 </dev/null) &
  local pid=$!
  etcd_wait_healthy 30 || return 1
  # setsid may fork: record the process that really serves the port.
  pid=$(etcd_find_pid || echo "$pid")
  etcd_record "$pid" && etcd_load_state || return 1
  etcd_log "etcd running as pid $pid, data in $CRUSTER_ETCD_DATA_DIR"
}

etcd_ensure() {
  if etcd_healthy; then
    local pid
    if pid=$(etcd_find_pid); then
      etcd_record "$pid" || return 1
      etcd_log "etcd already answering on $CRUSTER_ETCD_HOST:$CRUSTER_ETCD_PORT (pid $pid)"
    else
      etcd_log "etcd already answering on $CRUSTER_ETCD_HOST:$CRUSTER_ETCD_PORT (its process is not visible here: stop/start unavailable)"
      rm -f "$CRUSTER_ETCD_STATE"
    fi
    return 0
  fi
  if ! command -v etcd >/dev/null 2>&1; then
    etcd_log "the etcd binary is missing: install Debian's etcd-server (.ci/services.sh does)"
    return 1
  fi
  local base
  base=$(mktemp -d "${TMPDIR:-/tmp}/cruster-etcd.XXXXXX") || return 1
  CRUSTER_ETCD_CWD=$base
  CRUSTER_ETCD_LOG="$base/etcd.log"
  etcd_launch etcd --data-dir "$base/data" \
    --listen-client-urls "http://$CRUSTER_ETCD_HOST:$CRUSTER_ETCD_PORT" \
    --advertise-client-urls "http://$CRUSTER_ETCD_HOST:$CRUSTER_ETCD_PORT" \
    --listen-peer-urls "http://$CRUSTER_ETCD_HOST:$CRUSTER_ETCD_PEER_PORT"
}

etcd_stop() {
  local pid=""
  if etcd_load_state && [ -n "${CRUSTER_ETCD_PID:-}" ] && kill -0 "$CRUSTER_ETCD_PID" 2>/dev/null; then
    pid=$CRUSTER_ETCD_PID
  else
    pid=$(etcd_find_pid || true)
  fi
  if [ -z "$pid" ]; then
    etcd_log "etcd is not running"
    return 0
  fi
  if [ ! -r "$CRUSTER_ETCD_STATE" ]; then
    etcd_record "$pid" || return 1
  fi
  etcd_log "stopping etcd (pid $pid)"
  kill "$pid" 2>/dev/null || true
  local tries=0
  while kill -0 "$pid" 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge 100 ]; then
      etcd_log "etcd (pid $pid) ignored SIGTERM for 10 s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
}

etcd_start() {
  if etcd_healthy; then
    etcd_log "etcd already answering on $CRUSTER_ETCD_HOST:$CRUSTER_ETCD_PORT"
    return 0
  fi
  if ! etcd_load_state || [ -z "${CRUSTER_ETCD_ARGV+x}" ]; then
    etcd_log "no record of a stopped etcd in $CRUSTER_ETCD_STATE; starting a new one"
    etcd_ensure
    return
  fi
  etcd_launch "${CRUSTER_ETCD_ARGV[@]}"
}

etcd_status() {
  etcd_load_state || true
  echo "CRUSTER_ETCD_PID=${CRUSTER_ETCD_PID:-}"
  echo "CRUSTER_ETCD_DATA_DIR=${CRUSTER_ETCD_DATA_DIR:-}"
  etcd_healthy
}

case "${1:-}" in
  ensure) etcd_ensure ;;
  stop) etcd_stop ;;
  start) etcd_start ;;
  status) etcd_status ;;
  *)
    echo "usage: $0 ensure|stop|start|status" >&2
    exit 2
    ;;
esac
