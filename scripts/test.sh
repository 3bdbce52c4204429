#!/usr/bin/env bash
# Install everything the tests need (Debian packages, the venv) and run them.
# Run as root: the lab tests create network namespaces and start vsftpd,
# tftpd-hpa and smbd inside them; traffic stays inside those namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh test
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
