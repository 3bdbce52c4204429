"""Mutated Ethernet captures from fuzz/mutate.py's generator, for tests that
compare two ways of replaying the same frames."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from fuzz import mutate

REPO = Path(__file__).resolve().parents[2]
PORTS = (20, 21, 69, 139, 445, 989, 990, 1024, 2000, 40000, 50000, 65535)


def ethernet_batches(seed: int) -> Iterator[tuple[str, dict, list]]:
    """Endless (kind, config preset, frames) batches of Ethernet frames from
    the committed captures, some mutated (VLAN, QinQ, IPv6, truncated,
    damaged headers, reordered, retransmitted, dropped)."""
    rng = random.Random(seed)
    corpus = [c for c in mutate.load_corpus([REPO / "pcaps" / "real", REPO / "pcaps" / "demo.pcap"]) if c[1] == 1]
    mutator = mutate.Mutator(rng, PORTS, False)
    while True:
        kind, preset, lt, frames, _ = mutate.make_batch(rng, corpus, rng.choice((0.0, 0.05, 0.3)), mutator)
        if lt == 1:
            yield kind, mutate.PRESETS[preset], frames
