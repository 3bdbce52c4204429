"""``--rules`` and ``--filters``, the same for every command that loads rules."""

from __future__ import annotations

import argparse

from sensor.core.config import Config
from sensor.detect.rules import RuleSet, default_rules_dir, load_rules
from sensor.records.mde import RECORD_FIELDS

FILTERS_HELP = (
    "allow filters: a Sigma filter file, or a folder of them (repeatable; added to the config's "
    "`filters:` and to the filter files of the rules folder)"
)


def add_rule_options(
    p: argparse.ArgumentParser, rules_help: str = "rules folder or file (default: the shipped rules/)"
) -> None:
    p.add_argument("--rules", help=rules_help)
    p.add_argument("--filters", action="append", default=[], metavar="PATH", help=FILTERS_HELP)


def rules_path(args: argparse.Namespace) -> str:
    return str(getattr(args, "rules", None) or default_rules_dir())


def load_rule_set(args: argparse.Namespace, cfg: Config) -> RuleSet:
    """The rules of ``--rules`` (or the shipped ones) with every filter of the
    config's ``filters:``, ``--filters`` and the rules folder applied."""
    return load_rules(
        rules_path(args),
        RECORD_FIELDS,
        cfg.limits.max_match_chars,
        [*cfg.filters, *(getattr(args, "filters", None) or ())],
    )
