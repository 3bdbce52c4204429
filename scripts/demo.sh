#!/usr/bin/env bash
# Install xfer-sensor into ./.venv and replay the shipped demo capture.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh demo
exec .venv/bin/xfer-sensor replay pcaps/demo.pcap --config pcaps/demo.yaml --out out/demo "$@"
