"""The cascade's release number (X.Y.Z): what a submitted model card calls its `version`.

The cascade YAML's free-form `version` names a build (it is recorded with every kept sample); `release`
is the semantic version NATIX's `model_card.json` requires. Only `sn72-promote` raises it (with `next_release`,
in its round-trip edit of the served cascade file: sn72_tools/promotion/install.py), when something served
changed.
"""

from __future__ import annotations

import re
from typing import Literal

# Three non-negative integers without leading zeros: the X.Y.Z rule of NATIX's model card.
RELEASE_PATTERN = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$"
DEFAULT_RELEASE = "0.1.0"
Part = Literal["major", "minor", "patch"]

_RELEASE_RE = re.compile(RELEASE_PATTERN)


def parse_release(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of an X.Y.Z string; ValueError naming the rule otherwise."""
    match = _RELEASE_RE.match(text)
    if match is None:
        raise ValueError(f"release must be X.Y.Z (three whole numbers, no leading zeros), got {text!r}")
    major, minor, patch = (int(group) for group in match.groups())
    return major, minor, patch


def next_release(release: str, part: Part = "patch") -> str:
    """The release after `release`: a higher part resets the lower ones (1.2.3 minor -> 1.3.0)."""
    major, minor, patch = parse_release(release)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ValueError(f"part must be major, minor or patch, got {part!r}")
