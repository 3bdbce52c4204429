"""Community ID v1 flow hash (https://github.com/corelight/community-id-spec).

base64(sha1(seed:u16be | saddr | daddr | proto:u8 | pad:u8 | sport:u16be | dport:u16be))
with the endpoints ordered so that both directions give the same ID.
"""

from __future__ import annotations

import base64
import hashlib
import struct


def community_id_v1(saddr: bytes, daddr: bytes, proto: int, sport: int, dport: int, seed: int = 0) -> str:
    """``saddr``/``daddr`` are packed addresses (4 or 16 bytes)."""
    if (saddr, sport) > (daddr, dport):
        saddr, daddr, sport, dport = daddr, saddr, dport, sport
    h = hashlib.sha1(struct.pack("!H", seed))
    h.update(saddr)
    h.update(daddr)
    h.update(struct.pack("!BBHH", proto, 0, sport, dport))
    return "1:" + base64.b64encode(h.digest()).decode("ascii")
