"""The cascade's X.Y.Z release: validated at load, bumped in place without touching the rest of the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cascade.config import CascadeConfig, load_cascade
from cascade.release import next_release, parse_release

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
