#!/usr/bin/env bash
# Install everything the tests need (Debian packages, the venv), run the
# static checks (scripts/lint.sh) and the tests. The tests run even when a
# check failed, so one run reports both; either failing fails the run.
# Run as root: the lab tests create network namespaces and start vsftpd,
# tftpd-hpa and smbd inside them; traffic stays inside those namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh test
set +e
bash scripts/lint.sh
lint_rc=$?
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
if [ "$lint_rc" -ne 0 ]; then
  echo "static checks failed (scripts/lint.sh)" >&2
  if [ "$rc" -eq 0 ]; then rc=1; fi
fi
exit "$rc"
