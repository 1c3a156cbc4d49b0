"""The calibration file through the normal config path: applied, versioned, checked against the cascade."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from cascade import consensus
from cascade.calibration import threshold_map
from cascade.config import Calibration, load_cascade
from cascade.model_identity import content_identity
from neurons.config import ConfigError, load_config
from tests.factories.engine import cascade_config, expert_config

CASCADE = {
    "version": "v1",
    "levels": [
        {"name": "fast", "exit_margin": 0.3,
         "experts": [{"name": "a", "backend": "hf_classifier", "model": "org/a"}]},
        {"name": "slow", "exit_margin": 0.5,
         "experts": [{"name": "b", "backend": "zero_shot", "model": "./models/b"},
                     {"name": "c", "backend": "detector", "model": "../weights/c.pt"}]},
    ],
}


def make_models(folder: Path) -> dict[str, str]:
    """The local models the cascade names (b: a folder, c: a weights file), and each expert's content identity."""
    (folder / "sub" / "models" / "b").mkdir(parents=True, exist_ok=True)
    (folder / "sub" / "models" / "b" / "config.json").write_text('{"model_type": "clip"}')
    (folder / "weights").mkdir(exist_ok=True)
    (folder / "weights" / "c.pt").write_bytes(b"detector weights")
    return {"a": "name:org/a", "b": content_identity(str(folder / "sub" / "models" / "b")),
            "c": content_identity(str(folder / "weights" / "c.pt"))}


def calibration(folder: Path, **changes) -> dict:
    identity = make_models(folder)
    data = {
        "format": 2, "created": "2026-01-01T00:00:00+00:00", "cascade_version": "v1",
        "source": {"dataset": "folder:x", "kind": "folder", "distortion": "native", "images": 10,
                   "counts": {"0": 5, "1": 5}, "fit_images": 7, "held_out_images": 3, "split": "30% held out",
                   "seed": 0, "max_mcc_loss": 0.01},
        "experts": {"a": {"temperature": 2.0, "bias": 0.5, "backend": "hf_classifier", "model": "org/a",
                          "weights": identity["a"]},
                    "b": {"temperature": 1.0, "bias": 0.0, "backend": "zero_shot", "model": "b",
                          "weights": identity["b"]},
                    "c": {"temperature": 4.0, "bias": -1.0, "backend": "detector", "model": "c.pt",
                          "weights": identity["c"]}},
        "levels": [{"name": "fast", "weights": {"a": 1.5}, "intercept": 0.2, "threshold": 0.6, "exit_margin": 0.4},
                   {"name": "slow", "weights": {"a": 0.5, "b": 1.0, "c": 0.25}, "intercept": -0.1,
                    "exit_margin": 0.5}],
    }
    data.update(changes)
    return data


def write(folder: Path, cal: dict | None = None, cascade: dict | None = None) -> Path:
    """The cascade (in `folder`/sub/, so its ../weights/c.pt lands in `folder`/weights) and its calibration."""
    folder = folder / "sub"
    folder.mkdir(exist_ok=True)
    cascade = dict(cascade or CASCADE)
    if cal is not None:
        (folder / "cal.json").write_text(json.dumps(cal))
        cascade["calibration"] = "cal.json"
    path = folder / "cascade.yaml"
    path.write_text(yaml.safe_dump(cascade))
    return path


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_a_calibration_is_applied_and_changes_the_version(tmp_path):
    plain = load_cascade(write(tmp_path))
    assert plain.fitted() is None and plain.version == "v1"
    loaded = load_cascade(write(tmp_path, calibration(tmp_path)))
    assert loaded.calibration == (tmp_path / "sub" / "cal.json").resolve()
    assert loaded.version.startswith("v1+cal.") and len(loaded.version) == len("v1+cal.") + 8
    assert loaded.levels[0].experts[0].calibration == Calibration(temperature=2.0, bias=0.5)
    assert [level.exit_margin for level in loaded.levels] == [0.4, 0.5]
    other = calibration(tmp_path)
    other["levels"][0]["intercept"] = 0.3
    assert load_cascade(write(tmp_path, other)).version not in (loaded.version, "v1")

    pooling = consensus.Pooling.from_config(loaded)
    a = consensus.make_answer(loaded.levels[0].experts[0], 0, 0.8)
    assert a.logit == pytest.approx(math.log(4) / 2 + 0.5)
    pooled = sigmoid(0.2 + 1.5 * a.logit)  # level weights and intercept, then the map 0.6 -> 0.5
    expected = 0.5 + 0.5 * (pooled - 0.6) / 0.4
    assert pooling.level_probability(0, [a]) == pytest.approx(expected, abs=1e-12)
    assert pooling.should_exit(0, expected) == (abs(expected - 0.5) >= 0.4)
    b = consensus.make_answer(loaded.levels[1].experts[0], 1, 0.3)
    c = consensus.make_answer(loaded.levels[1].experts[1], 1, 0.9)
    level_2 = sigmoid(-0.1 + 0.5 * a.logit + 1.0 * b.logit + 0.25 * c.logit)  # threshold 0.5: no map
    assert pooling.level_probability(1, [a, b, c]) == pytest.approx(level_2, abs=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["experts"].pop("c"), r"experts differ: missing \['c'\]"),
        (lambda c: c["experts"]["b"].update(weights="sha256:" + "0" * 64),
         r"expert 'b' was fitted for the weights sha256:000000000000 \(b\), but b now holds sha256:"),
        (lambda c: c["experts"]["a"].update(backend="zero_shot"), "expert 'a' was fitted as zero_shot"),
        (lambda c: c["levels"][1].update(name="other"), "levels differ"),
        (lambda c: c["levels"][1]["weights"].pop("a"), "level 'slow' weighs"),
        (lambda c: c["levels"][0].update(exit_margin=0.7), r"levels\.0\.exit_margin"),
        (lambda c: c.update(format=3), "format 3; this code reads format 2"),
        (lambda c: c.update(format=1), "format 1 names models by path only"),
    ],
)
def test_a_calibration_that_does_not_fit_is_a_clear_error(tmp_path, change, message):
    cal = calibration(tmp_path)
    change(cal)
    with pytest.raises(ValueError, match=message):
        load_cascade(write(tmp_path, cal))


def test_unreadable_calibration_files_name_the_file(tmp_path):
    path = write(tmp_path, calibration(tmp_path))
    (tmp_path / "sub" / "cal.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cal\.json: not JSON"):
        load_cascade(path)
    (tmp_path / "sub" / "cal.json").unlink()
    with pytest.raises(ValueError, match=r"cal\.json: cannot read it"):
        load_cascade(path)


def test_the_miner_config_names_a_bad_calibration_in_one_error(tmp_path):
    write(tmp_path, calibration(tmp_path, experts={}))
    miner = tmp_path / "miner.yaml"
    miner.write_text(yaml.safe_dump({"cascade_file": "sub/cascade.yaml"}))
    with pytest.raises(ConfigError, match=r"invalid cascade in .*cascade\.yaml: calibration .*does not fit"):
        load_config(["--config", str(miner)], environ={})


def test_the_miner_logs_which_calibration_it_serves(tmp_path, capsys):
    from neurons.miner import run

    write(tmp_path, calibration(tmp_path))
    miner = tmp_path / "miner.yaml"
    miner.write_text(yaml.safe_dump({"cascade_file": "sub/cascade.yaml"}))
    try:
        # --check also checks the wallet, the chain and the models, none of which exist here: exit 2 after the log line
        assert run(["--config", str(miner), "--check"]) == 2
    finally:
        logger.remove()
        logger.add(sys.stderr)
    err = capsys.readouterr().err
    assert f"calibration {(tmp_path / 'sub' / 'cal.json').resolve()}" in err and "version v1+cal." in err


def test_a_named_but_unloaded_calibration_is_refused():
    cascade = cascade_config([[expert_config("a")]])
    cascade.calibration = Path("/somewhere/cal.json")
    with pytest.raises(ValueError, match="named but not loaded"):
        consensus.Pooling.from_config(cascade)


probability = st.floats(0.0, 1.0)


@given(st.lists(st.tuples(probability, st.floats(0.1, 5.0), st.floats(-2, 2), st.floats(0.0, 3.0)), max_size=5),
       st.floats(0.0, 0.5))
def test_without_a_calibration_pooling_is_exactly_the_old_rule(answers, margin):
    configs = [expert_config(f"e{i}", weight=w, calibration=Calibration(temperature=t, bias=b))
               for i, (_, t, b, w) in enumerate(answers)]
    made = [consensus.make_answer(c, 0, p) for c, (p, _, _, _) in zip(configs, answers, strict=True)]
    pooling = consensus.Pooling.from_config(cascade_config([configs or [expert_config("x")]], margins=[margin]))
    p = pooling.level_probability(0, made)
    assert p == consensus.pooled_probability(made)
    assert pooling.should_exit(0, p) == consensus.is_confident(p, margin)


@given(probability, probability, st.floats(0.02, 0.98))
def test_the_threshold_map_is_monotone_and_puts_the_threshold_on_one_half(p, q, t):
    assert threshold_map(t, t) == pytest.approx(0.5)
    assert threshold_map(0.0, t) == 0.0 and threshold_map(1.0, t) == pytest.approx(1.0)
    assert threshold_map(p, 0.5) == p
    if p < q:
        assert threshold_map(p, t) <= threshold_map(q, t)
    # validators' rounding of the mapped answer is "p > t" (to within float rounding right at t)
    if p <= t:
        assert threshold_map(p, t) <= 0.5
    elif p > t + 1e-12:
        assert threshold_map(p, t) > 0.5


def test_a_model_retrained_in_place_unbinds_its_calibration_everywhere_it_is_loaded(tmp_path):
    """The defect: a calibration named its model by the last path component, and every trained model is
    OUT/model, so a stale calibration passed load_cascade (--check, start-up, reload). Now the weights decide."""
    path = write(tmp_path, calibration(tmp_path))
    assert load_cascade(path).fitted() is not None
    (tmp_path / "weights" / "c.pt").write_bytes(b"retrained detector weights")  # same path, other weights
    with pytest.raises(ValueError, match=r"expert 'c' was fitted for the weights sha256:\w{12} \(c\.pt\), but c\.pt "
                                         r"now holds sha256:\w{12}: fit the calibration again"):
        load_cascade(path)
    miner = tmp_path / "miner.yaml"
    miner.write_text(yaml.safe_dump({"cascade_file": "sub/cascade.yaml"}))
    with pytest.raises(ConfigError, match="was fitted for the weights"):
        load_config(["--config", str(miner)], environ={})


def test_descriptive_files_and_a_moved_folder_keep_the_binding(tmp_path):
    path = write(tmp_path, calibration(tmp_path))
    folder = tmp_path / "sub" / "models" / "b"
    (folder / "README.md").write_text("a new model card")  # describes the model, does not change its answers
    (folder / "sn72_train.json").write_text("{}")
    assert load_cascade(path).fitted() is not None
    (tmp_path / "moved").mkdir()
    folder.rename(tmp_path / "moved" / "b")  # the same weights somewhere else: still the model fitted for
    moved = json.loads(json.dumps(CASCADE))
    moved["levels"][1]["experts"][0]["model"] = "../moved/b"
    cal = json.loads((tmp_path / "sub" / "cal.json").read_text())
    assert load_cascade(write(tmp_path, cal, moved)).fitted() is not None
