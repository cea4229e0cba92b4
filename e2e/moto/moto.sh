#!/usr/bin/env bash
# A real EC2 API endpoint on this machine for tests: moto's server (PyPI package `moto`),
# which speaks the EC2 query protocol the AWS SDKs use.
#
#   e2e/moto/moto.sh install        create the venv and install moto[server] if missing
#   e2e/moto/moto.sh start [PORT]   install if needed, start a server in the background
#                                   (PORT default: a free one), wait until it answers and
#                                   print its URL (http://HOST:PORT) on stdout
#   e2e/moto/moto.sh stop URL|PORT  stop the server started on that port, by its pid file
#
# Env: MOTO_HOST      address to bind (default 127.0.0.1); step pods in the local cluster
#                     reach the server on the node's IP, so e2e tests pass that IP
#      MAESTRO_CACHE  cache root (default $HOME/.cache/maestro)
#      PYTHON         interpreter for the venv (default python3)
#      MOTO_STOP_WITH_PID  stop the server when this process ends (a test passes its own
#                     pid, so a test binary killed before its cleanup leaves no server)
#      MOTO_ENABLE_AMI_VALIDATION, MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION
#                     default true here (moto's default is false): like EC2, RunInstances
#                     then rejects unknown image ids and instance types
#
# The venv lives outside the repo in a versioned folder (moto-v1) so a warm machine reuses
# it; a new moto pin installs over it. Pid files and logs of running servers are in
# $MAESTRO_CACHE/moto-v1/run, one pair per port.
set -euo pipefail

# Pinned: 5.2.5 is the version checked against the ec2 built-ins' tests. A bump must rerun
# `cargo test -p maestro-agent --test ec2_moto`.
moto_version="5.2.5"
cache="${MAESTRO_CACHE:-$HOME/.cache/maestro}/moto-v1"
venv="$cache/venv"
run_dir="$cache/run"
host="${MOTO_HOST:-127.0.0.1}"
python="${PYTHON:-python3}"

log() { printf '[moto] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

installed_version() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true
}

install() {
  mkdir -p "$cache"
  # Two test binaries starting servers at once would pip-install into the same venv.
  exec 8>"$cache/.install-lock"
  flock 8
  if [[ -x "$venv/bin/moto_server" && "$(installed_version)" == "$moto_version" ]]; then
    exec 8>&-
    return 0
  fi
  log "installing moto[server]==$moto_version into $venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv" >&2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "moto[server]==$moto_version" >&2
  [[ -x "$venv/bin/moto_server" ]] || die "pip installed moto but $venv/bin/moto_server is missing"
  exec 8>&-
}

# A port the kernel considers free now. Another process could take it before moto binds
# it; start notices (the server exits) and reports it rather than hanging.
free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port_of() {
  local target="$1"
  target="${target%/}"
  target="${target##*:}"
  [[ "$target" =~ ^[0-9]+$ ]] || die "not a URL with a port nor a port: $1"
  printf '%s\n' "$target"
}

# Whether the server answers HTTP. Python (which the venv has anyway) does the request, since
# curl may be missing on a minimal machine.
answers() {
  local url="$1"
  "$venv/bin/python" - "$url" <<'PY' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2) as response:
    sys.exit(0 if response.status < 500 else 1)
PY
}

start() {
  local port="${1:-}"
  install
  [[ -n "$port" ]] || port=$(free_port)
  [[ "$port" =~ ^[0-9]+$ ]] || die "port must be a number, got: $port"
  mkdir -p "$run_dir"
  # Logs stay after stop for a failed test's post-mortem; a day later they are pruned.
  find "$run_dir" -name '*.log' -mtime +1 -delete 2>/dev/null || true
  local pid_file="$run_dir/$port.pid" log_file="$run_dir/$port.log"
  if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    die "a moto server started by this script already runs on port $port (pid $(cat "$pid_file"))"
  fi
  # A wildcard bind is reached on loopback; any other address is reached as itself.
  local url_host="$host"
  [[ "$host" == "0.0.0.0" ]] && url_host=127.0.0.1
  local url="http://$url_host:$port"
  export MOTO_ENABLE_AMI_VALIDATION="${MOTO_ENABLE_AMI_VALIDATION:-true}"
  export MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION="${MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION:-true}"
  # setsid: the server must outlive this script and not get the test's terminal signals.
  setsid "$venv/bin/moto_server" -H "$host" -p "$port" >"$log_file" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$pid_file"
  local deadline=$((SECONDS + 60))
  until answers "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pid_file"
      die "moto_server exited before answering on $url; its log ($log_file):
$(tail -n 20 "$log_file")"
    fi
    if ((SECONDS >= deadline)); then
      kill "$pid" 2>/dev/null || true
      rm -f "$pid_file"
      die "moto_server did not answer on $url within 60 s; its log: $log_file"
    fi
    sleep 0.2
  done
  if [[ -n "${MOTO_STOP_WITH_PID:-}" ]]; then
    local owner="$MOTO_STOP_WITH_PID"
    [[ "$owner" =~ ^[0-9]+$ ]] || die "MOTO_STOP_WITH_PID must be a pid, got: $owner"
    # A watchdog detached from this script's output (the caller reads stdout to its end).
    # shellcheck disable=SC2016 # the inner script gets its values as "$1".."$3"
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
      if kill -0 "$2" 2>/dev/null; then kill "$2"; sleep 1; kill -9 "$2" 2>/dev/null; rm -f "$3"; fi' \
      moto-watchdog "$owner" "$pid" "$pid_file" >/dev/null 2>&1 </dev/null &
  fi
  log "moto $moto_version serves $url (pid $pid, log $log_file)"
  printf '%s\n' "$url"
}

stop() {
  [[ $# -ge 1 ]] || die "usage: $0 stop URL|PORT"
  local port pid_file pid
  port=$(port_of "$1")
  pid_file="$run_dir/$port.pid"
  if [[ ! -f "$pid_file" ]]; then
    log "no moto server started by this script on port $port"
    return 0
  fi
  pid=$(cat "$pid_file")
  # Only the pid this script recorded, and only if it still is a moto server: the pid may
  # have been reused since.
  if kill -0 "$pid" 2>/dev/null && grep -q moto_server "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid"
    # Its HTTP server takes seconds to notice SIGTERM; moto keeps all state in memory, so
    # SIGKILL after a short grace loses nothing.
    for _ in $(seq 10); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pid_file"
  log "stopped the moto server on port $port"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "usage: $0 install | start [PORT] | stop URL|PORT" ;;
esac
