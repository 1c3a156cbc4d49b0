"""sn72-submit: the repository folder and its card, then the upload through huggingface_hub to a local endpoint."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from cascade.config import load_cascade
from cascade.experts.hf_classifier import ClassifierExpert
from sn72_lab.offline import ensure_wallet, free_port
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.submission import ModelCard, main
from tests.factories.experts import load_expert, make_images
from tests.factories.local_http import local_http_server

ROOT = Path(__file__).resolve().parents[2]
CARD_KEYS = {"model_name": str, "description": str, "version": str, "submitted_by": str, "submission_time": int}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Any]:
    """A cascade naming a local fine-tuned model, a hub model, an ultralytics asset and a calibration file."""
    folder = tmp_path_factory.mktemp("workspace")
    wallet = ensure_wallet(folder / "wallets", "miner")
    build_tiny_vit(folder / "finetuned" / "vit")
    (folder / "config").mkdir()
    (folder / "config" / "calibration.json").write_text(json.dumps({"tiny-vit": {"temperature": 1.3}}))
    cascade = {
        "version": "fit-7",
        "release": "1.4.2",
        "calibration": "calibration.json",
        "levels": [
            {"name": "fast", "exit_margin": 0.3, "experts": [
                {"name": "tiny-vit", "backend": "hf_classifier", "model": "../finetuned/vit", "device": "cpu",
                 "options": {"positive_labels": ["Roadwork"]}}]},
            {"name": "second", "exit_margin": 0.5, "experts": [
                {"name": "siglip", "backend": "zero_shot", "model": "google/siglip2-so400m-patch14-384"},
                {"name": "yolo", "backend": "detector", "model": "yolo11m.pt", "options": {"classes": ["truck"]}}]},
        ],
    }
    (folder / "config" / "cascade.yaml").write_text("# operator's cascade\n" + yaml.safe_dump(cascade, sort_keys=False))
    return {"folder": folder, "wallet": wallet, "cascade": folder / "config" / "cascade.yaml"}


def submit_args(ws: dict[str, Any], out: Path, *extra: str) -> list[str]:
    return ["--cascade", str(ws["cascade"]), "--repo", "https://huggingface.co/someone/sn72-cascade",
            "--wallet.name", "miner", "--wallet.path", str(ws["folder"] / "wallets"), "--out", str(out),
            "--licence", "tiny-vit=apache-2.0", "--no-licence-lookup", *extra]


def test_dry_run_writes_a_complete_self_contained_folder(workspace, tmp_path, capsys):
    out = tmp_path / "submission"
    started = int(time.time())
    assert main(submit_args(workspace, out, "--dry-run")) == 0
    assert "dry run: nothing uploaded" in capsys.readouterr().out

    card = json.loads((out / "model_card.json").read_text())
    assert set(card) == set(CARD_KEYS)
    assert all(isinstance(card[key], kind) for key, kind in CARD_KEYS.items())
    assert card["version"] == "1.4.2" and card["model_name"] == "sn72-cascade"
    assert card["submitted_by"] == workspace["wallet"].hotkey.ss58_address
    assert started <= card["submission_time"] <= int(time.time())

    assert json.loads((out / "calibration.json").read_text()) == {"tiny-vit": {"temperature": 1.3}}
    raw = yaml.safe_load((out / "cascade.yaml").read_text())
    assert raw["calibration"] == "calibration.json" and raw["release"] == "1.4.2"
    assert raw["levels"][0]["experts"][0]["model"] == "./models/tiny-vit"
    assert raw["levels"][1]["experts"][0]["model"] == "google/siglip2-so400m-patch14-384"

    readme = (out / "README.md").read_text()
    assert "| fast | tiny-vit | hf_classifier | `./models/tiny-vit` | local | apache-2.0 |" in readme
    assert "`google/siglip2-so400m-patch14-384` | hub | unknown" in readme
    assert "`yolo11m.pt` | ultralytics | AGPL-3.0" in readme


def test_the_submitted_cascade_loads_its_packaged_model(workspace, tmp_path):
    out = tmp_path / "submission"
    assert main(submit_args(workspace, out, "--dry-run")) == 0
    packaged = out / "cascade.yaml"
    without_calibration = {k: v for k, v in yaml.safe_load(packaged.read_text()).items() if k != "calibration"}
    packaged.write_text(yaml.safe_dump(without_calibration))  # this branch's CascadeConfig has no calibration key
    expert_config = load_cascade(packaged).levels[0].experts[0]
    assert Path(expert_config.model) == (out / "models" / "tiny-vit").resolve()
    expert = load_expert(ClassifierExpert, "hf_classifier", Path(expert_config.model),
                         options={"positive_labels": ["Roadwork"]})
    probabilities = expert.predict_batch(make_images([(40, 60), (64, 64)]))
    assert len(probabilities) == 2 and all(0.0 <= p <= 1.0 for p in probabilities)


@pytest.mark.parametrize(("changes", "message"), [
    ({"version": "1.0"}, "X.Y.Z"),
    ({"version": "1.0.0-beta"}, "X.Y.Z"),
    ({"submitted_by": "not-an-address"}, "ss58"),
    ({"submission_time": 12}, "greater than"),
    ({"model_name": ""}, "at least 1"),
])
def test_the_card_refuses_what_natix_would_not_read(workspace, changes, message):
    good = {"model_name": "m", "description": "d", "version": "0.1.0",
            "submitted_by": workspace["wallet"].hotkey.ss58_address, "submission_time": int(time.time())}
    assert ModelCard(**good).version == "0.1.0"
    with pytest.raises(ValidationError, match=message):
        ModelCard(**{**good, **changes})


def test_a_missing_local_model_or_calibration_is_a_config_error(workspace, tmp_path, capsys):
    cascade = yaml.safe_load(workspace["cascade"].read_text())
    cascade["levels"][0]["experts"][0]["model"] = "../finetuned/missing"
    broken = workspace["cascade"].parent / "broken.yaml"
    broken.write_text(yaml.safe_dump(cascade))
    args = submit_args(workspace, tmp_path / "out", "--dry-run")
    args[args.index("--cascade") + 1] = str(broken)
    assert main(args) == 2
    assert "local model ../finetuned/missing does not exist" in capsys.readouterr().err


def test_a_folder_that_is_not_an_earlier_submission_is_never_overwritten(workspace, tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(submit_args(workspace, tmp_path, "--dry-run")) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert "not an earlier submission folder" in capsys.readouterr().err


@dataclass
class FakeHub:
    """The four hub endpoints upload_folder uses; every file is committed inline ("regular" upload mode)."""

    token: str
    refuse_with: int | None = None
    created: list[dict[str, Any]] = field(default_factory=list)
    commits: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, method: str, path: str, headers: Any, body: bytes, base: str) -> tuple[int, dict[str, Any]]:
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials"}
        if self.refuse_with is not None:
            return self.refuse_with, {"error": "You don't have the rights to create a model under this namespace"}
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            self.created.append(payload)
            return 200, {"url": f"{base}/{payload['organization']}/{payload['name']}"}
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {}
        if method == "POST" and "/preupload/" in path:
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}
        if method == "POST" and "/commit/" in path:
            items = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(item["value"] for item in items if item["key"] == "header")
            files = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                     for item in items if item["key"] == "file"}
            self.commits.append({"path": path, "summary": header["summary"], "files": files})
            return 200, {"commitUrl": f"{base}/someone/sn72-cascade/commit/abc123", "commitOid": "abc123",
                         "pullRequestUrl": None}
        return 404, {"error": f"no route {method} {path}"}


@pytest.fixture
def hub() -> Iterator[tuple[FakeHub, str]]:
    fake = FakeHub(token="hf_local_test_token")
    base: list[str] = []  # the server's own URL, which the hub's answers name

    def handle(method: str, path: str, headers: Any, body: bytes) -> tuple[int, str, bytes]:
        status, payload = fake.handle(method, path.split("?")[0], headers, body, base[0])
        return status, "application/json", json.dumps(payload).encode()

    with local_http_server(handle) as url:
        base.append(url)
        yield fake, url


def run_cli(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """sn72-submit as operators run it, with the hub's own environment variables."""
    return subprocess.run([sys.executable, "-m", "sn72_tools.submission", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "HOME": str(home), **env})


@pytest.mark.slow
def test_the_folder_is_uploaded_through_huggingface_hub_to_hf_endpoint(workspace, hub, tmp_path):
    fake, endpoint = hub
    out = tmp_path / "submission"
    done = run_cli(submit_args(workspace, out), tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0",
                   HF_TOKEN=fake.token)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(fake.created) == 1
    created = fake.created[0]
    assert (created["organization"], created["name"], created["type"]) == ("someone", "sn72-cascade", "model")
    assert created.get("visibility", "public") == "public" and not created.get("private", False)
    assert len(fake.commits) == 1 and fake.commits[0]["summary"] == "Release 1.4.2"
    local = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert fake.commits[0]["files"] == local
    assert "models/tiny-vit/model.safetensors" in local
    assert f"natix.model_url: {endpoint}/someone/sn72-cascade" in done.stdout


@pytest.mark.slow
def test_a_refused_upload_says_why(workspace, hub, tmp_path):
    fake, endpoint = hub
    fake.refuse_with = 403
    done = run_cli(submit_args(workspace, tmp_path / "s"), tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0",
                   HF_TOKEN=fake.token)
    assert done.returncode == 4
    assert done.stderr.startswith("error: the hub refused the upload: HTTP 403 (log in: hf auth login")


@pytest.mark.slow
@pytest.mark.parametrize("offline", ["1", "0"])
def test_no_network_is_one_line(workspace, tmp_path, offline):
    done = run_cli(submit_args(workspace, tmp_path / "s"), tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                   HF_HUB_OFFLINE=offline, HF_TOKEN="hf_x")
    assert done.returncode == 5, done.stdout + done.stderr
    expected = "HF_HUB_OFFLINE is set" if offline == "1" else "cannot reach the hub at http://127.0.0.1:"
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (tmp_path / "s" / "model_card.json").exists()  # the folder is written before the upload is tried


def test_help_has_no_side_effects(tmp_path):
    done = run_cli(["--help"], tmp_path)
    assert done.returncode == 0 and "model_card.json" in done.stdout
    assert list(tmp_path.iterdir()) == []

