"""sn72-synth end to end on a tiny random-weight SDXL saved like a hub snapshot and loaded through the tool's own
`from_pretrained`: t2i and i2i, the folder read back by the eval's reader, a run killed with SIGKILL and resumed,
every state a kill can leave repaired, duplicates refused, bad models refused in one line, the GPU bench's CPU path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sn72_lab.tiny_models import build_tiny_sdxl
from sn72_tools.evaluation.datasets import open_source
from sn72_tools.synth.cli import main
from sn72_tools.synth.manifest import MANIFEST, Manifest, sha256
from sn72_tools.synth.plan import Settings
from sn72_tools.synth.run import run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = ["--steps", "2", "--size", "64"]


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """Labelled like the eval's folders: each i2i job starts from a frame of its own label."""
    folder = tmp_path_factory.mktemp("frames")
    for index, (name, size) in enumerate([("none/a.jpg", (96, 72)), ("roadwork/b.jpg", (120, 60)),
                                          ("roadwork/c.jpg", (80, 80))]):  # all larger than 64: squashed to 64x64
        (folder / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", size, (60 * index, 120, 200 - 50 * index)).save(folder / name)
    return folder


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def never_load():
    raise AssertionError("nothing was missing: the pipeline must not be loaded")


def test_t2i_and_i2i_make_a_labelled_folder_the_eval_reads(tiny_sdxl, frames, tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["--out", str(out), "--model", str(tiny_sdxl), "--mode", "both", "--frames", str(frames), *TINY,
            "--batch-size", "2", "--no-progress"]
    assert main([*argv, "--count", "4"]) == 0
    assert "(4 written now, 0 recorded before, 0 adopted after a kill)" in capsys.readouterr().out
    rows = records(out)
    assert [(row["index"], row["mode"], row["status"]) for row in rows] == [
        (0, "t2i", "written"), (1, "t2i", "written"), (2, "i2i", "written"), (3, "i2i", "written")]
    for row in rows:
        assert (out / row["path"]).read_bytes() and sha256((out / row["path"]).read_bytes()) == row["sha256"]
        assert (row["width"], row["height"], row["steps"], row["guidance"]) == (64, 64, 2, 8.5)
        assert row["path"].startswith(("none/", "roadwork/")[row["label"]])
        i2i = row["mode"] == "i2i"
        assert (row["source_frame"] is not None, row["strength"]) == ((True, 0.7) if i2i else (False, None))
        assert not i2i or row["source_frame"].startswith(("none/", "roadwork/")[row["label"]])
        assert row["prompt"] and row["negative_prompt"] and isinstance(row["seed"], int)
    source = open_source(out)
    assert source.kind == "folder" and source.size == 4
    assert sorted((item.name, item.label) for item in source.items()) == sorted((r["path"], r["label"]) for r in rows)
    assert sorted(r["label"] for r in rows) == [0, 0, 1, 1]

    # The same settings and a larger count: only the new jobs run; the same count again: nothing runs.
    assert main([*argv, "--count", "6"]) == 0
    assert "(2 written now, 4 recorded before" in capsys.readouterr().out
    assert len(records(out)) == 6 and open_source(out).size == 6
    summary = run(out, Settings(model=str(tiny_sdxl), mode="both", seed=0, steps=2, size=64,
                                frames=str(frames.resolve())), 6, 2, never_load, progress=False)
    assert (summary.written, summary.already) == (0, 6)
    # Other settings on the same folder: refused, one line, nothing touched.
    assert main([*argv, "--count", "6", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was started with other settings (seed 0 -> 1)" in err


def test_a_killed_run_resumes_without_duplicates_or_half_images(tiny_sdxl, frames, tmp_path):
    out = tmp_path / "killed"
    argv = ["--out", str(out), "--model", str(tiny_sdxl), "--mode", "both", "--frames", str(frames), *TINY,
            "--batch-size", "1", "--count", "6", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "sn72_tools.synth.cli", *argv], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / MANIFEST
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read()[-2000:]!r}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()
    done_before = Manifest.open(manifest).records
    assert 2 <= len(done_before) < 6

    # The resume and the reference below run as the killed run did, each in a process of its own: in the suite's
    # process, after other tests, the tiny model's images differed in their last bits from a fresh process's (a
    # `--dist loadscope` run of 6 December), which says nothing about resuming.
    resumed = subprocess.run([sys.executable, "-m", "sn72_tools.synth.cli", *argv], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(done_before)} recorded before" in resumed.stdout
    rows = records(out)
    assert sorted(row["index"] for row in rows) == list(range(6))  # each job once
    assert len({row["sha256"] for row in rows}) == 6 and all(row["status"] == "written" for row in rows)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.parent != out)
    assert [p.relative_to(out).as_posix() for p in files] == sorted(row["path"] for row in rows)  # no .tmp left
    for row in rows:
        assert sha256((out / row["path"]).read_bytes()) == row["sha256"]
        with Image.open(out / row["path"]) as image:
            image.load()  # whole images only

    # The resumed images are the ones an uninterrupted run makes (batch 1 in both: the same computation).
    reference = tmp_path / "reference"
    made = subprocess.run([sys.executable, "-m", "sn72_tools.synth.cli", *argv[:1], str(reference), *argv[2:-3],
                           "--count", "3", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert made.returncode == 0, made.stderr[-2000:]
    by_index = {row["index"]: row["sha256"] for row in rows}
    assert {row["index"]: row["sha256"] for row in records(reference)} == {i: by_index[i] for i in range(3)}


def test_every_state_a_kill_leaves_is_repaired(tiny_sdxl, tmp_path):
    out = tmp_path / "repair"
    settings = Settings(model=str(tiny_sdxl), mode="t2i", seed=5, steps=2, size=64)
    from sn72_tools.synth.pipelines import load_pipelines

    run(out, settings, 3, 3, lambda: load_pipelines(str(tiny_sdxl), "cpu"), progress=False)
    lines = (out / MANIFEST).read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    # Killed after the rename but before the line (an image with no record), during the next line's append (a torn
    # line), and while writing another image (a .tmp file).
    (out / MANIFEST).write_text("".join(lines[:-1]) + lines[-1][:25])
    (out / "none" / "synth-000009-t2i.png.tmp").write_bytes(b"\x89PNG half")
    assert open_source(out).size == 3  # the half-written file is never read as an image
    summary = run(out, settings, 3, 3, never_load, progress=False)
    assert (summary.adopted, summary.temp_removed, summary.torn_bytes, summary.written) == (1, 1, 25, 0)
    assert "repaired after a kill: 1 temp file(s) removed, 25 byte(s) of a torn manifest line cut" in summary.lines()
    rows = records(out)
    assert [row["index"] for row in rows] == [0, 1, 2] and rows[-1]["sha256"] == last["sha256"]
    assert not list(out.rglob("*.tmp"))


def test_duplicates_are_refused_and_named(tiny_sdxl, tmp_path, capsys):
    """A model whose decoder outputs zeros draws one flat grey image for every prompt: byte-identical files."""
    from diffusers import AutoencoderKL

    model = tmp_path / "flat-sdxl"
    build_tiny_sdxl(model)
    vae = AutoencoderKL.from_pretrained(model / "vae")
    for parameter in vae.decoder.conv_out.parameters():
        parameter.data.zero_()
    vae.save_pretrained(model / "vae")
    out = tmp_path / "dups"
    argv = ["--out", str(out), "--model", str(model), *TINY, "--count", "3", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "duplicates refused: 2: 1 (same bytes as 0), 2 (same bytes as 0)" in text
    rows = records(out)
    assert [(row["status"], row.get("duplicate_of"), row["path"]) for row in rows] == [
        ("written", None, rows[0]["path"]), ("duplicate", 0, None), ("duplicate", 0, None)]
    assert open_source(out).size == 1
    assert main(argv) == 0  # recorded as refused: a re-run does not make them again
    assert "(0 written now, 3 recorded before" in capsys.readouterr().out


def test_a_missing_or_wrong_model_is_one_line(tmp_path, capsys):
    (tmp_path / "not-a-pipeline").mkdir()
    for model, message in [
        (str(tmp_path / "not-a-pipeline"), "no diffusers pipeline there (model_index.json missing)"),
        ("nobody/no-such-sdxl", "cannot load an SDXL pipeline"),
    ]:
        assert main(["--out", str(tmp_path / model.replace("/", "_")), "--model", model, "--count", "1",
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("sn72-synth: error:")]
        assert len(errors) == 1 and message in errors[0], err
    assert "sn72-download-models --synth-model nobody/no-such-sdxl" in errors[0]


@pytest.mark.bench
def test_the_gpu_bench_runs_its_cpu_path_and_bounds_its_time(tmp_path):
    from sn72_lab import synth_bench

    # i2i only: the longer path (a 1920x1080 frame squashed first); t2i runs in the other tests.
    argv = ["--tiny", "--steps", "2", "--repeats", "2", "--batch-sizes", "1,2", "--modes", "i2i"]
    assert synth_bench.main(["--out", str(tmp_path / "a"), *argv]) == 0
    report = json.loads((tmp_path / "a" / "synth_bench.json").read_text())
    assert [(r["mode"], r["batch_size"]) for r in report["results"]] == [("i2i", 1), ("i2i", 2)]
    for result in report["results"]:
        spread = result["images_per_s"]
        assert len(result["values"]) == 2 and 0 < spread["min"] <= spread["mean"] <= spread["max"]
        assert result["image_size"] == [64, 64]
    assert report["skipped"] == [] and report["i2i_denoising_steps"] == 1 and report["command"].startswith("python3")
    assert synth_bench.main(["--out", str(tmp_path / "b"), *argv, "--seconds", "0"]) == 0
    bounded = json.loads((tmp_path / "b" / "synth_bench.json").read_text())
    assert bounded["results"] == [] and len(bounded["skipped"]) == 2


def test_the_bench_builds_in_memory_as_it_does_at_real_size(frames):
    """The real-size path (built in place, i2i from the same weights) on the tiny configs, through the tool's call."""
    from sn72_lab.synth_bench import in_memory
    from sn72_lab.tiny_models import tiny_sdxl_configs
    from sn72_tools.synth.pipelines import generate
    from sn72_tools.synth.plan import list_frames, make_job

    pipelines = in_memory(*tiny_sdxl_configs(), "cpu")
    for mode in ("t2i", "i2i"):
        settings = Settings(model="bench", mode=mode, seed=0, steps=2, size=64, frames=str(frames))
        jobs = [make_job(settings, index, list_frames(frames)) for index in range(2)]
        assert [image.size for image in generate(pipelines, jobs, settings, frames)] == [(64, 64)] * 2


def test_the_bench_configs_are_sdxl_base_sized():
    """The real-size configs, built on the meta device (no memory): stable-diffusion-xl-base-1.0's parameter counts."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sn72_lab.synth_bench import SDXL_TEXT, SDXL_TEXT_2, SDXL_UNET, SDXL_VAE

    with torch.device("meta"):
        text, text_2 = CLIPTextConfig(**SDXL_TEXT), CLIPTextConfig(**SDXL_TEXT_2)
        models = [UNet2DConditionModel(**SDXL_UNET), AutoencoderKL(**SDXL_VAE), CLIPTextModel(text),
                  CLIPTextModelWithProjection(text_2)]
    counts = [sum(p.numel() for p in model.parameters()) for model in models]
    assert counts == [2_567_463_684, 83_653_863, 123_060_480, 694_659_840]


@pytest.mark.gpu
def test_the_tool_runs_on_cuda_in_bfloat16(tiny_sdxl, frames, tmp_path, capsys):
    import torch

    from sn72_tools.synth.pipelines import load_pipelines

    pipelines = load_pipelines(str(tiny_sdxl), "cuda")
    assert pipelines.text_to_image.unet.dtype == pipelines.image_to_image.unet.dtype == torch.bfloat16
    argv = ["--out", str(tmp_path / "gpu"), "--model", str(tiny_sdxl), "--mode", "both", "--frames", str(frames),
            *TINY, "--count", "4", "--batch-size", "2", "--device", "cuda", "--no-progress"]
    assert main(argv) == 0 and "(4 written now" in capsys.readouterr().out
    assert open_source(tmp_path / "gpu").size == 4


def test_an_unreadable_frame_is_one_line_before_any_model_loads(frames, tmp_path, capsys):
    broken = tmp_path / "frames"
    for path in frames.rglob("*.jpg"):
        (broken / path.relative_to(frames)).parent.mkdir(parents=True, exist_ok=True)
        (broken / path.relative_to(frames)).write_bytes(path.read_bytes())
    (broken / "roadwork" / "cut.jpg").write_bytes((frames / "none" / "a.jpg").read_bytes()[:40])  # header cut
    # No model exists at this path: the frame is found first, so the error names it and nothing loads.
    assert main(["--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model"), "--mode", "i2i",
                 "--frames", str(broken), "--count", "2", "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sn72-synth: error:")]
    assert len(errors) == 1 and "cut.jpg is not a readable image" in errors[0]


def test_a_folder_it_cannot_write_is_one_line_before_any_model_loads(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "none").write_text("a file where a label folder goes")  # cannot be made a folder, even by root
    settings = Settings(model="unused", mode="t2i", seed=1, steps=2, size=64)
    with pytest.raises(Exception, match="cannot write there") as caught:
        run(out, settings, 2, 2, never_load, progress=False)
    assert type(caught.value).__name__ == "SynthError"


def test_a_file_cut_short_after_its_rename_is_made_again_not_adopted(tiny_sdxl, tmp_path):
    out = tmp_path / "cut"
    settings = Settings(model=str(tiny_sdxl), mode="t2i", seed=6, steps=2, size=64)
    from sn72_tools.synth.pipelines import load_pipelines

    def load():
        return load_pipelines(str(tiny_sdxl), "cpu")

    run(out, settings, 2, 2, load, progress=False)
    whole = records(out)
    lines = (out / MANIFEST).read_text().splitlines(keepends=True)
    (out / MANIFEST).write_text(lines[0])  # the second image's line lost, its file then cut short
    second = out / whole[1]["path"]
    second.write_bytes(second.read_bytes()[:100])
    summary = run(out, settings, 2, 2, load, progress=False)
    assert (summary.adopted, summary.written) == (0, 1)
    assert records(out)[1]["sha256"] == whole[1]["sha256"]  # made again, the same seed's same image
