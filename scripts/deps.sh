#!/usr/bin/env bash
# Shared by scripts/demo.sh and scripts/test.sh: Debian packages and the venv.
# Usage: deps.sh demo|test
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-demo}"

apt_pkgs=(python3-venv python3-pip)
if [ "$want" = test ]; then
  # tshark: the independent oracle; the rest: real servers and clients for the lab tests
  # util-linux (setpriv) and passwd (useradd): clients run as other local users
  apt_pkgs+=(tshark tcpdump vsftpd tftpd-hpa tftp-hpa samba smbclient lftp curl iproute2 openssl procps systemd rsyslog
             util-linux passwd
             # syslog over TLS: rsyslog's openssl stream driver (tests/test_outputs_syslog_tls.py)
             rsyslog-openssl
             # the report's browser tests: Debian's chromium, driven by the pip playwright package
             # (tests/support/browser.py; never `playwright install`, which downloads browsers)
             chromium
             # Apache Spark (pyspark, local mode) runs the exported queries in tests/test_export.py
             default-jre-headless)
fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # do not let package scripts start vsftpd/tftpd/smbd in the root namespace:
  # the tests start their own servers inside network namespaces
  policy_created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_created=1
  fi
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$want" = test ]; then
  # sigma: pySigma, sigma-cli and the backends for tests/test_sigma_tools.py and test_export.py
  .venv/bin/python -m pip install -q -e '.[test,lint,sigma]'
else
  .venv/bin/python -m pip install -q .
fi
