"""The committed captures with the configs that make their rules fire, for the tests that
replay them and compare what other paths make of the records (tests/test_hunt.py,
tests/test_export.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PCAPS = REPO / "pcaps"
# the lab captures (pcaps/real/README.md): client 10.77.0.1, server 10.77.0.2 typed Public so the
# rules fire; the client's packets carry offloaded checksums, and so do the server's once home_net
# is narrowed to the client (docs/engine.md, checksum offload)
REAL_CONFIG = (
    "home_net: [10.77.0.1/32]\n"
    "ip_type_overrides:\n  10.77.0.2/32: Public\n"
    "checksum_offload_nets: [10.77.0.2/32]\n"
    "inventory:\n  10.77.0.1: LAB-CLIENT\n"
)


def _captures() -> list[tuple[str, Path, Path | None]]:
    out: list[tuple[str, Path, Path | None]] = [("demo", PCAPS / "demo.pcap", PCAPS / "demo.yaml")]
    out += [(f"real/{p.stem}", p, None) for p in sorted((PCAPS / "real").glob("*.pcap"))]
    for p in sorted((PCAPS / "adversary").glob("*.pcap")):
        cfg = PCAPS / "adversary" / ("bytes.yaml" if p.stem.endswith("_claims") else "adversary.yaml")
        out.append((f"adversary/{p.stem}", p, cfg))
    return out


# (name, capture, config or None for REAL_CONFIG)
CAPTURES = _captures()
# captures whose replay raises alerts with these configs: the comparison is not of two empty files
ALERTING = {"demo", "real/ftp_repeated", "adversary/insertion"}


def config_for(tmp: Path, cfg: Path | None) -> Path:
    """The capture's config file (REAL_CONFIG written to ``tmp`` for the lab captures)."""
    if cfg is not None:
        return cfg
    p = tmp / "real.yaml"
    p.write_text(REAL_CONFIG)
    return p
