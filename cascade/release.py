"""The cascade's release number (X.Y.Z): what a submitted model card calls its `version`.

The cascade YAML's free-form `version` names a build (it is recorded with every kept sample); `release`
is the semantic version NATIX's `model_card.json` requires. Fitting and training bump it with
`bump_release(path)`, which edits that one line and leaves the rest of the file (comments, order,
quoting) exactly as it was.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml

# Three non-negative integers without leading zeros: the X.Y.Z rule of NATIX's model card.
RELEASE_PATTERN = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$"
DEFAULT_RELEASE = "0.1.0"
Part = Literal["major", "minor", "patch"]

_RELEASE_RE = re.compile(RELEASE_PATTERN)
# A top-level `release:` line: optional quotes around the value, an optional trailing comment.
_LINE_RE = re.compile(r"^release:[ \t]*(?P<quote>[\"']?)(?P<value>[^\"'#\s]*)(?P=quote)(?P<rest>[ \t]*(#.*)?)$", re.M)
_VERSION_LINE_RE = re.compile(r"^version:.*$", re.M)


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


def bump_release(path: Path, part: Part = "patch") -> str:
    """Raise the cascade file's `release` by one `part` and return the new value.

    Only the `release:` line changes; a file without one gets it after its `version:` line (or at the
    end), starting from the default. The file is replaced atomically.
    """
    path = Path(path)
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a cascade file holds a mapping at the top")
    current = data.get("release", DEFAULT_RELEASE)
    if not isinstance(current, str):
        raise ValueError(f"{path}: release must be an X.Y.Z string, got {current!r}")
    new = next_release(current, part)
    match = _LINE_RE.search(text)
    if match is not None:
        line = f"release: {match['quote']}{new}{match['quote']}{match['rest']}"
        updated = text[: match.start()] + line + text[match.end() :]
    elif "release" in data:
        raise ValueError(f"{path}: 'release' is not on one plain top-level line; edit it by hand")
    else:
        version_line = _VERSION_LINE_RE.search(text)
        if version_line is not None:
            updated = text[: version_line.end()] + f"\nrelease: {new}" + text[version_line.end() :]
        else:
            updated = text + ("" if text.endswith("\n") or not text else "\n") + f"release: {new}\n"
    reread = yaml.safe_load(updated)
    if not isinstance(reread, dict) or reread.get("release") != new:
        raise ValueError(f"{path}: could not place release {new} safely; edit it by hand")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(updated)
    tmp.replace(path)
    return new
