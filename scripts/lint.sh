#!/usr/bin/env bash
# Static checks, the same as .pre-commit-config.yaml: ruff (lint and format),
# mypy ([tool.mypy]) and the import contracts ([tool.importlinter]), with the
# venv's tools (pyproject.toml's `lint` extra; scripts/deps.sh installs it).
# Runs every check, then exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
failed=()

run() {
  local name=$1
  shift
  echo "lint: $name" >&2
  if ! "$@"; then
    failed+=("$name")
  fi
}

run "ruff check" "$bin/ruff" check --no-cache --output-format concise .
run "ruff format --check" "$bin/ruff" format --check --no-cache --output-format concise .
run "mypy" "$bin/mypy" --no-incremental --cache-dir=/dev/null
run "lint-imports" "$bin/lint-imports" --no-cache

if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed" >&2
