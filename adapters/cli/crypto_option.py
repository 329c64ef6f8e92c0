"""`--crypto-policy-override FILE`: the one command-line option every program shares for it.

The operator's override of the shipped crypto policy (docs/threat-model/crypto-policy.md §4):
it may only tighten the policy (more denials, earlier cut-off dates) and add time-bound
exceptions, and it is refused when it is a symlink or writable by group or others. Every program
that checks the policy at start-up (`rustynet-control init|serve|show`, `rustynetd`,
`rustynet-relay init|serve`) and `rustynet doctor` takes it, so doctor checks exactly what a
service started with the same option would check.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

OPTION: Final = "--crypto-policy-override"
HELP: Final = (
    "operator override of the shipped crypto policy (TOML): may only add denials, earlier "
    "cut-off dates and time-bound exceptions; refused if group/other-writable or a symlink"
)


def add_crypto_policy_option(parser: argparse.ArgumentParser) -> None:
    """Add the option; its value lands in `crypto_policy_override` (a Path or None)."""
    parser.add_argument(
        OPTION, dest="crypto_policy_override", type=Path, metavar="FILE", default=None, help=HELP
    )
