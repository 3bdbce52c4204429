#!/usr/bin/env python3
"""Record the real-traffic captures in pcaps/real/ (run as root).

    python pcaps/record_real.py                   # all scenarios
    python pcaps/record_real.py tftp smb445       # some of them
    python pcaps/record_real.py --out /tmp/x      # somewhere else

Builds the lab of tests/lab (client namespace 10.77.0.1, server namespace
10.77.0.2, a bridge namespace between them that can lose packets for the
*_lossy scenarios), starts vsftpd (21 and 990), tftpd-hpa and smbd in the
server namespace, runs curl / lftp / tftp / smbclient in the client namespace
and records the client's veth with tcpdump: one <scenario>.pcap per scenario and
a <scenario>.json sidecar with the ground truth (sessions, command lines,
files, sizes, sha256, directions, users, expected tracked connections).
Every file transfer is checked byte for byte, and the capture is checked with
tshark to hold exactly the tracked connections the sidecar states.
Traffic never leaves the lab's namespaces; servers and namespaces are removed
at the end, also on failure.

record_fast() (re-exported from tests/lab/scenarios.py) records a small fresh
capture for a test run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root: the lab is tests.lab

from tests.lab.netns import LabError  # noqa: E402
from tests.lab.scenarios import SCENARIOS, record_all, record_fast  # noqa: E402,F401

__all__ = ["record_all", "record_fast", "main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    ap.add_argument("--out", type=Path, default=HERE / "real", help="output directory")
    ap.add_argument("--prefix", default="xs", help="namespace name prefix (default xs)")
    ap.add_argument("--subnet", default="10.77.0", help="lab /24 (default 10.77.0)")
    ap.add_argument(
        "--no-verify", action="store_true", help="skip the tshark check of each capture against its ground truth"
    )
    ap.add_argument("--fast", action="store_true", help="record only the quick test capture")
    a = ap.parse_args(argv)
    try:
        if a.fast:
            side = record_fast(a.out, prefix=a.prefix, subnet=a.subnet)
            sides = [side]
        else:
            sides = record_all(a.out, a.scenarios or None, prefix=a.prefix, subnet=a.subnet, verify=not a.no_verify)
    except LabError as e:
        print(f"record_real: {e}", file=sys.stderr)
        return 1
    for side in sides:
        pcap = a.out / side["pcap"]
        print(
            f"{pcap}  {pcap.stat().st_size:>9} bytes  {side['capture']['packets']} packets  "
            f"tracked={side['expected_tracked_connections']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
