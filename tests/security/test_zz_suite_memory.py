"""Across the whole security suite, the miner's resident memory grew less than 200 MB.

Named to run last in this folder (pytest runs the files of a folder in name order); each attack also checks its
own growth (`HostileMiner.survives`).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.security

MEMORY_LIMIT_MB = 200.0


def test_resident_memory_growth_across_the_suite(hostile):
    assert hostile.answers(), "the miner does not answer at the end of the suite"
    growth_mb = hostile.rss_mb() - hostile.baseline_mb
    assert growth_mb < MEMORY_LIMIT_MB, f"resident memory grew {growth_mb:.0f} MB across the security suite"
