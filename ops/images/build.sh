#!/usr/bin/env bash
# Build esflow's container images offline (no image registry needed), tagged esflow-local/...:
#   esflow-local/debian:bookworm   a minbase Debian root file system (debootstrap + docker import)
#   esflow-local/kafka:<version>   Apache Kafka on a Debian JRE, the local stack's Maven classpath,
#                                  configured by KAFKA_* variables like the official apache/kafka image
#   esflow-local/postgres:15       Debian's PostgreSQL 15, configured by POSTGRES_* like the official image
#   esflow-local/python:3.11       Debian's Python 3.11 in a venv on PATH (base of the esflow image)
#   esflow-local/esflow:dev        the repository's Dockerfile built on that base
# Usage: ops/images/build.sh [base|kafka|postgres|esflow ...]   (default: all; base only when missing)
# Needs a running engine (DOCKER_HOST, see engine.sh), debootstrap and the esflow venv (ops/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=ops/images
PREFIX=esflow-local
KAFKA_VERSION="$(.venv/bin/python -c 'from esflow.settings import KafkaSettings; print(KafkaSettings().version)')"
MIRROR="${ESFLOW_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE="$PREFIX/debian:bookworm"
# Temporary trees (root file system, build context): removed on exit, also after a failed step.
SCRATCH=()
trap 'rm -rf "${SCRATCH[@]}"' EXIT

timed() {
  local label=$1 t0
  shift
  t0=$(date +%s%N)
  "$@"
  local ms=$((($(date +%s%N) - t0) / 1000000))
  printf 'image step %-10s %4d.%d s\n' "$label" $((ms / 1000)) $((ms % 1000 / 100)) >&2
}

build() {  # build <tag> <context> [docker build args...]
  local tag=$1 ctx=$2
  shift 2
  # --force-rm: a failed step's container must not outlive the build.
  docker build -q --force-rm --network host -t "$tag" "$@" "$ctx" >/dev/null
}

base() {
  if docker image inspect "$BASE" >/dev/null 2>&1 && [ "${ESFLOW_IMAGES_REBUILD_BASE:-}" != 1 ]; then
    return 0
  fi
  local root
  root="$(mktemp -d /var/tmp/esflow-rootfs.XXXXXX)"
  SCRATCH+=("$root" "$root.log")
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  # mktemp -d made the directory 0700: as the image's "/" it would lock every non-root user out.
  chmod 755 "$root"
  # apt inside later builds must not keep downloaded packages in the layers.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
}

kafka() {
  local ctx
  ctx="$(mktemp -d /var/tmp/esflow-kafka-ctx.XXXXXX)"
  SCRATCH+=("$ctx")
  # The very classpath `esflow stack up` runs (resolved by Maven into the cache once per version).
  local libs
  libs="$(.venv/bin/python - <<'PY'
from esflow.settings import KafkaSettings, StackSettings
from ops.stack.kafka import KafkaJars
jars = KafkaJars(KafkaSettings(), StackSettings())
jars.ensure()
print(jars.libs)
PY
)"
  cp -r "$HERE/kafka/." "$ctx/"
  cp -r "$libs" "$ctx/opt/libs"
  # The cache's directories are private (mkdtemp); in the image the broker runs as appuser.
  chmod -R a+rX "$ctx"
  build "$PREFIX/kafka:$KAFKA_VERSION" "$ctx" --build-arg "BASE=$BASE"
}

postgres() { build "$PREFIX/postgres:15" "$HERE/postgres" --build-arg "BASE=$BASE"; }

esflow() {
  local ctx
  ctx="$(mktemp -d /var/tmp/esflow-python-ctx.XXXXXX)"
  SCRATCH+=("$ctx")
  cp -r "$HERE/python/." "$ctx/"
  chmod -R a+rX "$ctx"
  mkdir -p "$ctx/ca"
  # The host's extra CAs (a TLS-inspecting proxy's, a company's): pip inside the build needs them.
  find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' -exec cp {} "$ctx/ca/" \; 2>/dev/null || true
  build "$PREFIX/python:3.11" "$ctx" --build-arg "BASE=$BASE"
  build "$PREFIX/esflow:dev" . --build-arg "PYTHON_BASE=$PREFIX/python:3.11"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(base kafka postgres esflow)
for step in "${steps[@]}"; do
  case "$step" in
    base | kafka | postgres | esflow) timed "$step" "$step" ;;
    *) echo "unknown image: $step" >&2; exit 2 ;;
  esac
done
# The base is needed by later rebuilds only; keep it (it is small next to the JRE layers).
docker image ls "$PREFIX/*" --format '{{.Repository}}:{{.Tag}} {{.Size}}' >&2
