"""A candidate: a copy of the served cascade YAML in a tool's own output folder, with new weights and/or a new
calibration. `sn72-eval --fit` and `sn72-train --refit` write one; only `sn72-promote` puts one in service.

The copy keeps the served file's comments and order (ruamel.yaml round trip). Relative model paths are made
absolute (the copy lives elsewhere); replaced experts point at the new folder; `calibration:` names the file
written beside the candidate.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from ruamel.yaml import YAML


def write_candidate(served: Path, out: Path, calibration: Path | None, models: dict[str, str] | None = None,
                    name: str = "candidate.yaml") -> Path:
    """Write OUT/`name` from the served cascade `served`; returns its path."""
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096
    yaml_rt.indent(mapping=2, sequence=4, offset=2)
    data = yaml_rt.load(served.read_text())
    base = served.resolve().parent
    models = models or {}
    for level in data["levels"]:
        for expert in level["experts"]:
            model = str(expert["model"])
            if expert["name"] in models:
                expert["model"] = str(Path(models[expert["name"]]).resolve())
            elif model.startswith(("./", "../")):
                expert["model"] = str((base / model).resolve())
    out.mkdir(parents=True, exist_ok=True)
    if calibration is not None:
        data["calibration"] = os.path.relpath(calibration.resolve(), out.resolve())
    elif "calibration" in data and models:
        # The served calibration is bound to the weights it was fitted for (cascade/model_identity.py): with new
        # weights the unfitted candidate serves the YAML's own calibration until a fit writes one.
        del data["calibration"]
    elif "calibration" in data:
        data["calibration"] = str((base / str(data["calibration"])).resolve())
    buffer = io.StringIO()
    buffer.write(f"# Candidate written from {served} by a fit; serve it only through sn72-promote.\n")
    yaml_rt.dump(data, buffer)
    path = out / name
    path.write_text(buffer.getvalue())
    return path
