"""The cascade's X.Y.Z release: validated at load, bumped in place without touching the rest of the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cascade.config import CascadeConfig, load_cascade
from cascade.release import bump_release, next_release, parse_release

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
LEVELS = [{"name": "l1", "experts": [{"name": "e", "backend": "hf_classifier", "model": "x/y"}]}]


@pytest.mark.parametrize("good", ["0.1.0", "1.2.3", "10.0.99", "0.0.0"])
def test_x_y_z_releases_are_accepted(good):
    assert CascadeConfig.model_validate({"release": good, "levels": LEVELS}).release == good


@pytest.mark.parametrize("bad", ["1.0", "1.2.3.4", "v1.2.3", "01.2.3", "1.2.x", "1.2.3-rc1", " 1.2.3", ""])
def test_anything_else_is_refused_with_the_rule_named(bad):
    with pytest.raises(ValidationError, match=r"X\.Y\.Z"):
        CascadeConfig.model_validate({"release": bad, "levels": LEVELS})


def test_a_cascade_without_a_release_starts_at_0_1_0():
    assert CascadeConfig.model_validate({"levels": LEVELS}).release == "0.1.0"


def test_every_shipped_cascade_names_its_release():
    for path in sorted(CONFIG_DIR.glob("cascade.*.yaml")):
        assert "release" in yaml.safe_load(path.read_text()), path
        assert parse_release(load_cascade(path).release)


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000))
def test_each_part_bumps_and_resets_the_lower_ones(major, minor, patch):
    release = f"{major}.{minor}.{patch}"
    assert next_release(release, "patch") == f"{major}.{minor}.{patch + 1}"
    assert next_release(release, "minor") == f"{major}.{minor + 1}.0"
    assert next_release(release, "major") == f"{major + 1}.0.0"
    assert parse_release(next_release(release, "patch")) > parse_release(release)


_LINE = st.from_regex(r"[a-z_]{1,8}: [a-z0-9 ]{0,12}", fullmatch=True).filter(lambda s: not s.startswith("release"))
_COMMENT = st.from_regex(r"# [A-Za-z0-9 .:]{0,30}", fullmatch=True)


@given(before=st.lists(st.one_of(_LINE, _COMMENT), max_size=5), after=st.lists(st.one_of(_LINE, _COMMENT), max_size=5),
       quote=st.sampled_from(["", "'", '"']), trailing=st.sampled_from(["", "  # bumped by fitting"]))
def test_bumping_changes_only_the_release_line(tmp_path_factory, before, after, quote, trailing):
    keys = [line.split(":")[0] for line in before + after if not line.startswith("#")]
    if len(keys) != len(set(keys)):
        return  # duplicate keys are not a valid mapping; nothing to preserve
    path = tmp_path_factory.mktemp("bump") / "cascade.yaml"
    lines = [*before, f"release: {quote}1.4.9{quote}{trailing}", *after]
    path.write_text("\n".join(lines) + "\n")
    assert bump_release(path, "patch") == "1.4.10"
    expected = [*before, f"release: {quote}1.4.10{quote}{trailing}", *after]
    assert path.read_text() == "\n".join(expected) + "\n"


def test_a_file_without_release_gets_one_after_its_version(tmp_path):
    path = tmp_path / "cascade.yaml"
    original = "# header\nversion: fit-3  # build\nprior: 0.5\nlevels: []\n"
    path.write_text(original)
    assert bump_release(path, "minor") == "0.2.0"
    assert path.read_text() == "# header\nversion: fit-3  # build\nrelease: 0.2.0\nprior: 0.5\nlevels: []\n"


def test_the_shipped_production_cascade_bumps_and_still_loads(tmp_path):
    source = CONFIG_DIR / "cascade.production.yaml"
    copy = tmp_path / source.name
    copy.write_text(source.read_text())
    before = load_cascade(copy).release
    after = bump_release(copy, "minor")
    assert parse_release(after) > parse_release(before)
    assert load_cascade(copy).release == after
    changed = [(a, b) for a, b in zip(source.read_text().splitlines(), copy.read_text().splitlines(), strict=True)
               if a != b]
    assert len(changed) == 1 and changed[0][1].startswith(f"release: {after}")


def test_a_release_that_is_not_x_y_z_is_not_bumped(tmp_path):
    path = tmp_path / "cascade.yaml"
    path.write_text("release: 1.0\nlevels: []\n")
    with pytest.raises(ValueError, match=r"X\.Y\.Z"):
        bump_release(path)
    assert path.read_text() == "release: 1.0\nlevels: []\n"
