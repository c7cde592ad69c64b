#!/usr/bin/env bash
# A private Docker engine for esflow's container tests: `engine.sh start|stop|status|env`.
#
# It listens on its own socket (not /var/run/docker.sock) with its own data and exec roots, so other
# programs on the machine that probe the default socket never see it, and `stop` removes every
# container, volume and image it ever held. Containers use the host network only: the daemon runs
# without a bridge or iptables rules (the machine kinds esflow's CI runs on allow neither).
# Clients reach it through DOCKER_HOST, which `eval "$(ops/images/engine.sh env)"` exports.
set -euo pipefail

ROOT="${ESFLOW_DOCKER_ROOT:-/var/lib/esflow-docker}"
RUN="${ESFLOW_DOCKER_RUN:-/run/esflow-docker}"
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
LOG="$ROOT/dockerd.log"
export DOCKER_HOST="unix://$SOCK"

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "engine.sh: the Docker daemon runs as root (run this as root)" >&2
    exit 1
  fi
}

install_missing() {
  local pkgs=()
  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  command -v docker >/dev/null 2>&1 || pkgs+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || pkgs+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "installing: ${pkgs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # policy-rc.d (where present) keeps apt from starting the distribution's own daemon.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
}

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && docker version >/dev/null 2>&1
}

start() {
  need_root
  install_missing
  if running; then
    echo "engine already running on $SOCK" >&2
    return 0
  fi
  mkdir -p "$ROOT" "$RUN"
  # setsid: the daemon must not die with the shell (or CI step) that started it.
  setsid dockerd --host "$DOCKER_HOST" --data-root "$ROOT/data" --exec-root "$RUN/exec" \
    --pidfile "$PIDFILE" --bridge=none --iptables=false --ip6tables=false --storage-driver=vfs \
    >"$LOG" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    if docker version >/dev/null 2>&1; then
      echo "engine up on $SOCK (DOCKER_HOST=$DOCKER_HOST)" >&2
      return 0
    fi
    sleep 0.5
  done
  echo "engine.sh: dockerd did not answer within 60 s; its log:" >&2
  tail -20 "$LOG" >&2
  exit 1
}

stop() {
  need_root
  if running; then
    # Containers first (they hold volumes), then volumes: nothing may outlive the engine.
    ids=$(docker ps -aq)
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
    vols=$(docker volume ls -q)
    [ -z "$vols" ] || docker volume rm -f $vols >/dev/null
    kill "$(cat "$PIDFILE")"
    for _ in $(seq 1 60); do
      kill -0 "$(cat "$PIDFILE" 2>/dev/null || echo 0)" 2>/dev/null || break
      sleep 0.5
    done
  fi
  # dockerd leaves its network namespace handle mounted under the exec root; release it so the
  # directory can go (and a later start begins clean).
  awk -v run="$RUN" 'index($2, run) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
    umount "$mnt" 2>/dev/null || umount -l "$mnt"
  done
  rm -rf "$RUN"
  if [ "${1:-}" = "--purge" ]; then
    # vfs layers are full copies of each image's tree: gigabytes, worth removing after CI.
    rm -rf "$ROOT"
  fi
  echo "engine stopped" >&2
}

case "${1:-}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  status) running && echo "running on $SOCK" || { echo "not running"; exit 1; } ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
  *) echo "usage: $0 start | stop [--purge] | status | env" >&2; exit 2 ;;
esac
