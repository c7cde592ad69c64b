#!/usr/bin/env bash
# CI's container stages (after `make test`): a private Docker engine, the offline images, the
# integration tier against testcontainers of those images, the docker-compose pipeline check, and a
# teardown that leaves no engine, container, volume or image behind (also when a stage fails).
# Needs root (dockerd). Prints the duration of every stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
stage() {  # stage <label> <command...>: run it and print how long it took
  local label=$1 t0 ms
  shift
  echo "== container stage: $label" >&2
  t0=$(date +%s%N)
  "$@"
  ms=$((($(date +%s%N) - t0) / 1000000))
  printf '== container stage %-16s %4d.%d s\n' "$label" $((ms / 1000)) $((ms % 1000 / 100)) >&2
}
teardown() {
  ops/images/engine.sh stop --purge || true
}
trap teardown EXIT

stage engine ops/images/engine.sh start
eval "$(ops/images/engine.sh env)"
stage images ops/images/build.sh

export ESFLOW_IMAGE_KAFKA="esflow-local/kafka:$(.venv/bin/python -c 'from esflow.settings import KafkaSettings; print(KafkaSettings().version)')"
export ESFLOW_IMAGE_POSTGRES=esflow-local/postgres:15
export ESFLOW_IMAGE_ESFLOW=esflow-local/esflow:dev
export TESTCONTAINERS_RYUK_DISABLED=true

no_containers_left() {
  local left
  left="$(docker ps -aq)"
  if [ -n "$left" ]; then
    echo "containers left behind:" >&2
    docker ps -a >&2
    return 1
  fi
}
# The integration tier: what the testcontainers fixtures serve (unit tests need no
# server, e2e tests run whole pipelines of host processes and ran on the local stack already), but
# the stack CLI tests, which start local stacks of their own instead of using the fixtures.
stage testcontainers env ESFLOW_TEST_STACK=testcontainers .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/integration --ignore=tests/integration/test_stack_cli.py --ignore=tests/integration/test_stack_cluster.py
stage no-leftovers no_containers_left
stage compose .venv/bin/python -m ops.images.compose_check
stage no-leftovers no_containers_left
