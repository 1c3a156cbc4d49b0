"""A candidate YAML: the served cascade copied with comments, paths made absolute, a served calibration dropped
once the weights it was bound to are replaced (it would be refused for the new ones)."""

from __future__ import annotations

from pathlib import Path

import yaml

from sn72_tools.promotion.candidate import write_candidate

SERVED = """# the operator's comment
version: v1
calibration: calibrations/served.abcd1234.json
levels:
  - name: l
    experts:
      - name: a   # level one
        backend: hf_classifier
        model: ./models/a
      - name: b
        backend: hf_classifier
        model: org/b
"""


def test_new_weights_drop_the_served_calibration_and_keep_the_rest(tmp_path: Path) -> None:
    served = tmp_path / "config" / "cascade.yaml"
    served.parent.mkdir()
    served.write_text(SERVED)
    path = write_candidate(served, tmp_path / "out", None, {"a": str(tmp_path / "runs" / "model")},
                           name="unfitted.yaml")
    text = path.read_text()
    assert "# the operator's comment" in text and "# level one" in text
    data = yaml.safe_load(text)
    assert "calibration" not in data
    assert data["levels"][0]["experts"][0]["model"] == str((tmp_path / "runs" / "model").resolve())
    assert data["levels"][0]["experts"][1]["model"] == "org/b"  # a hub id stays as it is
    fitted = write_candidate(served, tmp_path / "out2", tmp_path / "out2" / "calibration.json")
    assert yaml.safe_load(fitted.read_text())["calibration"] == "calibration.json"
    same = yaml.safe_load(write_candidate(served, tmp_path / "out3", None).read_text())
    assert same["calibration"] == str((served.parent / "calibrations" / "served.abcd1234.json").resolve())
    assert same["levels"][0]["experts"][0]["model"] == str((served.parent / "models" / "a").resolve())
