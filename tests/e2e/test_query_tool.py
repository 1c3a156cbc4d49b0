"""sn72-query against the real miner process on loopback (real axon, real dendrite, the miner's own rate limit).

The miner's guard is tightened (5/s, burst 5) so that an unpaced client trips it within a few requests; each test
signs with a hotkey of its own, so one test's drained bucket never meets another's requests.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sn72_lab.offline import run_miner
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.client import synthetic_image
from sn72_tools.evaluation.scoring import accuracy, mcc
from sn72_tools.query import main as query_main
from tests.factories.cascades import vit_cascade
from tests.factories.dendrites import validator_wallets

pytestmark = pytest.mark.slow

CALLERS = ("folder", "sheet", "no-retry", "retry", "names", "config")


@pytest.fixture(scope="module")
def miner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("query-miner")
    wallets, miner_wallet, _ = validator_wallets(folder, CALLERS, stake=5000.0)
    model = build_tiny_vit(folder / "models" / "tiny-vit")
    cascade = vit_cascade(model, "query-e2e", max_batch=8, max_wait_ms=2.0)
    extra = {"guards": {"rate_per_s": 5.0, "burst": 5.0}, "log_level": "WARNING"}
    with run_miner(folder, wallets, miner_wallet, cascade, extra=extra) as process:
        yield process, wallets


def ask(miner: Any, caller: str, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    process, wallets = miner
    out = tmp_path / f"report-{caller}.json"
    code = query_main(["--wallet.name", caller, "--wallet.path", str(wallets), "--miner", f"127.0.0.1:{process.port}",
                       "--miner-hotkey", process.hotkey, "--json", str(out), *args])
    return code, json.loads(out.read_text())


def images(folder: Path, names: dict[str, int], offset: int = 0) -> dict[Path, int]:
    """JPEGs at folder/<name> (name may hold a subfolder), each a different picture; path -> label."""
    made = {}
    for i, (name, label) in enumerate(names.items()):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_image(offset + i).save(path)
        made[path] = label
    return made


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_none_roadwork_folder_is_labelled_and_paced_under_the_miner_limit(miner: Any, tmp_path: Path) -> None:
    """Defaults only: 16 images from one hotkey against a 5/s, burst 5 guard, all answered, all labelled."""
    images(tmp_path / "set", {f"{'roadwork' if i % 2 else 'none'}/{i}.jpg": i % 2 for i in range(16)})
    code, report = ask(miner, "folder", tmp_path, str(tmp_path / "set"))
    assert code == 0, report
    assert report["requests"] == report["answered"] == 16 and report["errors"] == {}
    assert report["labelled"] == report["labelled_answered"] == 16 and report["labelled_missed"] == 0
    assert report["rate_limited_gave_up"] == 0
    assert report["mcc"] == report["mcc_misses_wrong"] and report["accuracy"] == report["accuracy_misses_wrong"]


def test_an_eval_csv_with_a_header_and_one_prediction_row_per_request(miner: Any, tmp_path: Path) -> None:
    made = images(tmp_path / "pics", {f"{i}.jpg": i % 2 for i in range(6)}, offset=100)
    sheet = tmp_path / "labels.csv"
    sheet.write_text("path,label\n" + "".join(f"pics/{p.name},{'roadwork' if y else 'none'}\n"
                                              for p, y in made.items()))
    code, report = ask(miner, "sheet", tmp_path, str(sheet), "--repeat", "2", "--predictions",
                       str(tmp_path / "run.csv"))
    assert code == 0, report
    assert report["requests"] == report["labelled"] == report["labelled_answered"] == 12
    rows = read_predictions(tmp_path / "run.csv")
    assert list(rows[0]) == ["name", "sha256", "label", "prediction", "status_code", "latency_ms"]
    assert len(rows) == 12
    by_hash = {hashlib.sha256(p.read_bytes()).hexdigest(): y for p, y in made.items()}
    for row in rows:
        assert by_hash[row["sha256"]] == int(row["label"]) and row["status_code"] == "200"
        assert 0.0 <= float(row["prediction"]) <= 1.0 and float(row["latency_ms"]) > 0
        assert row["name"].endswith(".jpg")
    assert {row["sha256"] for row in rows} == set(by_hash)


def test_misses_are_shown_and_counted_as_wrong_answers(miner: Any, tmp_path: Path) -> None:
    """Unpaced and never retried, the guard refuses most of them; the report must not hide that."""
    images(tmp_path / "set", {f"{i}/{i}-{j}.jpg": i for i in (0, 1) for j in range(8)}, offset=200)
    code, report = ask(miner, "no-retry", tmp_path, str(tmp_path / "set"), "--rate", "0", "--retries", "0",
                       "--predictions", str(tmp_path / "run.csv"))
    assert code == 1
    assert report["labelled"] == 16 and report["labelled_missed"] >= 5, report
    assert report["labelled_answered"] + report["labelled_missed"] == 16
    assert report["rate_limited_gave_up"] == report["labelled_missed"] and report["rate_limited_retries"] == 0
    rows = read_predictions(tmp_path / "run.csv")
    refused = [row for row in rows if row["status_code"] == "429"]
    assert len(refused) == report["labelled_missed"] and all(row["prediction"] == "-1" for row in refused)
    answered = [(int(r["label"]), float(r["prediction"])) for r in rows if r["status_code"] == "200"]
    charged = [(int(r["label"]), float(r["prediction"]) if r["status_code"] == "200" else 1.0 - int(r["label"]))
               for r in rows]
    assert report["accuracy"] == pytest.approx(accuracy(*zip(*answered, strict=True)))
    assert report["accuracy_misses_wrong"] == pytest.approx(accuracy(*zip(*charged, strict=True)))
    assert report["mcc_misses_wrong"] == pytest.approx(mcc(*zip(*charged, strict=True)))
    assert report["accuracy_misses_wrong"] == pytest.approx(report["accuracy"] * report["labelled_answered"] / 16)


def test_a_rate_limited_request_is_retried_with_backoff(miner: Any, tmp_path: Path) -> None:
    images(tmp_path / "set", {f"{i}.jpg": -1 for i in range(12)}, offset=300)  # plain images, no labels
    code, report = ask(miner, "retry", tmp_path, str(tmp_path / "set"), "--rate", "0", "--backoff", "0.3")
    assert code == 0, report
    assert report["requests"] == report["answered"] == 12 and "labelled" not in report
    assert report["rate_limited_retries"] >= 1 and report["rate_limited_gave_up"] == 0


def test_labels_by_file_name_may_have_the_eval_header(miner: Any, tmp_path: Path) -> None:
    made = images(tmp_path / "loose", {f"n{i}.jpg": i % 2 for i in range(4)}, offset=400)
    names = tmp_path / "names.csv"
    names.write_text("path,label\n" + "".join(f"{p.name},{y}\n" for p, y in made.items()))
    code, report = ask(miner, "names", tmp_path, "--labels", str(names), *map(str, made))
    assert code == 0, report
    assert report["labelled"] == report["labelled_answered"] == 4


def test_the_miner_config_names_the_miner_to_query(miner: Any, tmp_path: Path) -> None:
    """--config: the axon port and the miner's hotkey come from the miner's own YAML."""
    _, wallets = miner
    out = tmp_path / "report.json"
    code = query_main(["--wallet.name", "config", "--wallet.path", str(wallets), "--config",
                       str(wallets.parent / "miner.yaml"), "--synthetic", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["requests"] == report["answered"] == 2, report
