"""The generated street task: both classes, the requested sizes, the same bytes for the same seed, other pictures for
another seed, and a CLI that says what it wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sn72_tools.training import streets
from sn72_tools.training.streets import FULL_SIZES, make_street_folder, scaled_sizes, street_scene

SMALL = scaled_sizes(240)


def digests(folder: Path) -> dict[str, str]:
    files = sorted(folder.rglob("*.jpg"))
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_scaled_sizes_keep_the_aspect_and_the_mix():
    assert max(max(size) for size in SMALL) == 240
    assert {round(w / h, 1) for w, h in SMALL} == {round(w / h, 1) for w, h in FULL_SIZES}
    assert all(min(size) >= 480 and size[0] <= 1920 and size[1] <= 1080 for size in FULL_SIZES)
    assert scaled_sizes(4000) == FULL_SIZES


def test_a_folder_holds_both_classes_at_the_requested_sizes_named_by_seed(tmp_path):
    counts = make_street_folder(tmp_path, 24, seed=7, sizes=SMALL)
    assert counts == {0: 12, 1: 12}
    files = sorted(tmp_path.rglob("*.jpg"))
    assert {p.parent.name for p in files} == {"0", "1"} and len(files) == 24
    assert all(p.name.startswith("s7-") for p in files)
    seen = set()
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size in SMALL
            seen.add(image.size)
    assert len(seen) >= 3  # mixed aspect ratios, not one size


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_pictures(tmp_path):
    make_street_folder(tmp_path / "a", 10, seed=3, sizes=SMALL)
    make_street_folder(tmp_path / "b", 10, seed=3, sizes=SMALL)
    make_street_folder(tmp_path / "c", 10, seed=4, sizes=SMALL)
    make_street_folder(tmp_path / "d", 4, seed=3, sizes=SMALL)  # a smaller set is the start of the larger one
    a, b, c, d = (digests(tmp_path / name) for name in "abcd")
    assert a == b
    assert not set(a.values()) & set(c.values()) and not set(a) & set(c)  # names never collide across seeds
    assert d == {name: digest for name, digest in a.items() if int(name[-9:-4]) < 4}


def test_scenes_of_the_two_labels_differ_and_fill_the_frame():
    # the same generator state: the roadwork scene holds what the other does not
    clear = np.asarray(street_scene(np.random.default_rng(5), 0, (320, 180)))
    roadwork = np.asarray(street_scene(np.random.default_rng(5), 1, (320, 180)))
    assert clear.shape == roadwork.shape == (180, 320, 3)
    assert np.abs(clear.astype(int) - roadwork.astype(int)).mean() > 1.0
    assert clear.std() > 20  # a scene, not a flat picture


def test_parallel_workers_write_the_same_bytes(tmp_path):
    make_street_folder(tmp_path / "one", 8, seed=1, sizes=SMALL)
    make_street_folder(tmp_path / "two", 8, seed=1, sizes=SMALL, workers=2)
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


def test_the_cli_writes_small_images_and_says_how_fast(tmp_path, capsys):
    assert streets.main(["--out", str(tmp_path), "--images", "6", "--seed", "2", "--small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 6 images to {tmp_path} (3 in 0/, 3 in 1/)") and "images/s" in out
    with Image.open(next(tmp_path.rglob("*.jpg"))) as image:
        assert max(image.size) <= 240
    with pytest.raises(SystemExit):
        streets.main(["--out", str(tmp_path), "--images", "1"])
