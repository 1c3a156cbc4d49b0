"""sn72-synth's pure parts: prompts and their labels, the job plan, the manifest's repairs, the settings guard, the
hub patterns, the validators' i2i resize."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sn72_tools.synth import snapshot
from sn72_tools.synth.manifest import RUN_FILE, Manifest, check_settings
from sn72_tools.synth.pipelines import validator_resize
from sn72_tools.synth.plan import Settings, SynthError, list_frames, make_job
from sn72_tools.synth.prompts import NEGATIVE_PROMPTS, ROADWORK_WORDS, build_prompt, job_seed, label_of

seeds = st.integers(min_value=0, max_value=2**63 - 1)


@given(seed=seeds, label=st.sampled_from([0, 1]), mode=st.sampled_from(["t2i", "i2i"]))
@settings(max_examples=300, deadline=None)
def test_the_label_is_read_back_from_the_prompt(seed, label, mode):
    prompt = build_prompt(label, random.Random(seed), mode)
    assert prompt.label == label and label_of(prompt.text) == label
    assert prompt.negative == NEGATIVE_PROMPTS[mode]
    assert prompt.text.startswith("Photorealistic dashcam footage of ")
    # CLIP reads 77 tokens; the validators ask their LLM for under 40 words. 50 words stays inside 77 tokens.
    assert len(prompt.text.split()) <= 50
    if label:
        assert 1 <= len(prompt.objects) <= 2 and all(obj in prompt.text for obj in prompt.objects)
    else:
        lowered = prompt.text.lower().replace("no construction", "")
        assert prompt.objects == () and not [word for word in ROADWORK_WORDS if word in lowered]


@given(seed=seeds)
def test_prompts_are_reproducible_from_the_seed(seed):
    assert build_prompt(1, random.Random(seed)) == build_prompt(1, random.Random(seed))


def test_no_prompt_is_longer_than_50_words():
    """The longest possible prompt, from the longest part of each template slot (sampling rarely draws it)."""
    from sn72_tools.synth import prompts

    def longest(options):
        return max(len(option.split()) for option in options)

    objects = sorted((len(name.split()) for name in prompts.ROADWORK_OBJECTS), reverse=True)
    frame = longest(prompts.SCENES) + longest(prompts.TIMES) + longest(prompts.WEATHER) + longest(prompts.CAMERAS)
    roadwork = 4 + frame + longest(prompts.ROADWORK_LEADS) + objects[0] + 1 + objects[1] + 4  # "and", "at a ..."
    clear = 4 + frame + longest(prompts.CLEAR_LEADS)
    assert max(roadwork, clear) <= 50
    drawn = max(len(build_prompt(1, random.Random(seed)).text.split()) for seed in range(3000))
    assert drawn <= roadwork


def test_label_of_reads_plain_sentences():
    assert label_of("Photorealistic dashcam footage of a motorway with orange traffic cones.") == 1
    assert label_of("Photorealistic dashcam footage of a street with no construction, normal traffic.") == 0
    assert label_of("A road with construction barriers and no construction workers.") == 1  # barriers say it


def test_bad_label_or_mode_is_refused():
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        build_prompt(2, random.Random(0))
    with pytest.raises(ValueError, match="mode must be one of"):
        build_prompt(0, random.Random(0), "t2v")


@given(seed=seeds, pairs=st.integers(min_value=1, max_value=40))
@settings(max_examples=50, deadline=None)
def test_jobs_are_balanced_and_do_not_depend_on_the_count(seed, pairs):
    run = Settings(model="m", mode="t2i", seed=seed)
    jobs = [make_job(run, index, None) for index in range(2 * pairs)]
    assert sum(job.label for job in jobs) == pairs  # each pair of indices holds one of each label
    assert len({job.seed for job in jobs}) == len(jobs)
    assert make_job(run, 2 * pairs - 1, None) == jobs[-1]
    assert label_of(jobs[0].prompt) == jobs[0].label


def tiny_image(path: Path) -> None:
    """A real 4x4 image (frames are opened when listed: an unreadable one is refused)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (90, 120, 150)).save(path)


def test_mode_both_alternates_pairs_and_picks_frames(tmp_path):
    for name in ("f0.jpg", "f1.jpg", "f2.jpg"):
        tiny_image(tmp_path / name)
    (tmp_path / "notes.txt").write_bytes(b"")
    run = Settings(model="m", mode="both", seed=3, frames=str(tmp_path))
    jobs = [make_job(run, index, list_frames(tmp_path)) for index in range(8)]
    assert [job.mode for job in jobs] == ["t2i", "t2i", "i2i", "i2i"] * 2
    assert all((job.source_frame is None) == (job.mode == "t2i") for job in jobs)
    assert {job.source_frame for job in jobs if job.source_frame} <= {"f0.jpg", "f1.jpg", "f2.jpg"}
    assert jobs[2].negative_prompt == NEGATIVE_PROMPTS["i2i"] and jobs[0].name == "synth-000000-t2i"
    assert job_seed(3, 0) != job_seed(4, 0) and job_seed(3, 0) == jobs[0].seed


def test_a_labelled_frames_folder_gives_each_job_a_frame_of_its_label(tmp_path):
    for name in ("none/a.jpg", "none/b.png", "roadwork/c.jpg", "roadwork/sub/d.jpg", "loose.jpg"):
        tiny_image(tmp_path / name)
    frames = list_frames(tmp_path)
    assert frames.labelled and [p.name for p in frames.pool(1)] == ["c.jpg", "d.jpg"]
    run = Settings(model="m", mode="i2i", seed=0, frames=str(tmp_path))
    jobs = [make_job(run, index, frames) for index in range(40)]
    assert all(job.source_frame.startswith(("none/", "roadwork/")[job.label]) for job in jobs)
    assert {job.source_frame for job in jobs} == {"none/a.jpg", "none/b.png", "roadwork/c.jpg", "roadwork/sub/d.jpg"}
    tiny_image(tmp_path / "only" / "roadwork" / "e.jpg")
    with pytest.raises(SynthError, match="label folders hold only one label"):
        list_frames(tmp_path / "only")
    (tmp_path / "only" / "none" / "f.jpg").parent.mkdir()
    (tmp_path / "only" / "none" / "f.jpg").write_bytes(b"not an image")
    with pytest.raises(SynthError, match=r"f\.jpg is not a readable image"):
        list_frames(tmp_path / "only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthError, match="no images in it"):
        list_frames(tmp_path / "empty")


def test_a_torn_last_line_is_cut_and_appends_go_on(tmp_path):
    path = tmp_path / "manifest.jsonl"
    lines = [json.dumps({"index": i, "status": "written", "sha256": f"h{i}", "label": 0}) for i in range(2)]
    path.write_text("\n".join(lines) + "\n" + '{"index": 2, "sta')
    manifest = Manifest.open(path)
    assert sorted(manifest.records) == [0, 1] and manifest.torn_bytes == len('{"index": 2, "sta')
    assert manifest.hashes == {"h0": 0, "h1": 1}
    manifest.append({"index": 2, "status": "duplicate", "sha256": "h0", "label": 1})
    reread = Manifest.open(path)
    assert sorted(reread.records) == [0, 1, 2] and reread.torn_bytes == 0 and reread.written() == 2
    path.write_text("not json\n")
    with pytest.raises(SynthError, match=r"manifest.jsonl:1: not a manifest record"):
        Manifest.open(path)


def test_a_folder_refuses_other_settings(tmp_path):
    first = Settings(model="m", mode="t2i", seed=0)
    check_settings(tmp_path / "out", first)
    assert json.loads((tmp_path / "out" / RUN_FILE).read_text())["seed"] == 0
    check_settings(tmp_path / "out", first)  # the same settings continue
    with pytest.raises(SynthError, match=r"other settings \(seed 0 -> 1, steps 25 -> 30\); use the same ones"):
        check_settings(tmp_path / "out", Settings(model="m", mode="t2i", seed=1, steps=30))


SDXL_FILES = [
    "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer_2/merges.txt",
    "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0_0.9vae.safetensors", "vae_1_0/diffusion_pytorch_model.safetensors",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/model.onnx", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder_2/model.fp16.safetensors", "text_encoder_2/flax_model.msgpack",
    "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors", "vae/config.json",
]


def test_hub_patterns_fetch_one_precision_and_nothing_else():
    def picked(variant):
        return set(filter_repo_objects(SDXL_FILES, allow_patterns=snapshot.allow_patterns(variant)))

    common = {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer_2/merges.txt",
              "unet/config.json", "vae/config.json"}
    assert picked("fp16") == common | {"unet/diffusion_pytorch_model.fp16.safetensors",
                                       "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                                       "vae/diffusion_pytorch_model.fp16.safetensors"}
    assert picked(None) == common | {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                     "vae/diffusion_pytorch_model.safetensors"}


def test_validator_resize_squashes_only_frames_larger_than_the_side():
    wide = validator_resize(Image.new("L", (1920, 1080)), 1024)
    assert wide.size == (1024, 1024) and wide.mode == "RGB"
    assert validator_resize(Image.new("RGB", (1025, 300)), 1024).size == (1024, 1024)
    assert validator_resize(Image.new("RGB", (800, 600)), 1024).size == (800, 600)  # as the validators' code does


def test_the_cli_checks_its_bounds(tmp_path: Path, capsys):
    from sn72_tools.synth.cli import main

    for argv, message in [
        (["--count", "0"], "--count must be at least 1, got 0"),
        (["--count", "2", "--mode", "i2i"], "--mode i2i needs --frames"),
        (["--count", "2", "--mode", "i2i", "--frames", str(tmp_path / "none")], "not a folder"),
        (["--count", "2", "--frames", str(tmp_path)], "--frames is read only by --mode i2i or both"),
        (["--count", "2", "--strength", "0"], "--strength must be in (0, 1]"),
        (["--count", "2", "--size", "100"], "--size must be a multiple of 8"),
        (["--count", "two"], "invalid int value"),
    ]:
        try:
            code = main(["--out", str(tmp_path / "out"), *argv])
        except SystemExit as exc:  # argparse's own errors (a flag's type) exit from inside parse_args
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, argv
        assert message in err and err.count("\n") == 1 and err.startswith("sn72-synth: error:"), err


def test_download_models_fetches_the_synth_model_in_one_precision(tmp_path, monkeypatch, capsys):
    """sn72-download-models --synth-model, run for real; only huggingface_hub's network step is replaced."""
    import huggingface_hub

    from sn72_tools import download_models

    calls: list[dict] = []

    def fake_snapshot(repo_id: str, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        if repo_id == "nobody/missing":
            raise huggingface_hub.errors.RepositoryNotFoundError("404 nobody/missing")
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    sdxl = "stabilityai/stable-diffusion-xl-base-1.0"
    assert download_models.main(["--synth-model", sdxl, "--cache-dir", str(tmp_path / "hub")]) == 0
    assert calls[-1]["allow_patterns"] == snapshot.allow_patterns("fp16") and calls[-1]["cache_dir"] == tmp_path / "hub"
    assert f"run sn72-synth --model {sdxl} --variant fp16" in capsys.readouterr().out
    assert download_models.main(["--synth-model", "nobody/missing", "--synth-model", sdxl,
                                 "--synth-variant", "none"]) == 1  # the failure is counted, the next one fetched
    assert [call["repo_id"] for call in calls[-2:]] == ["nobody/missing", sdxl]
    assert calls[-1]["allow_patterns"] == snapshot.allow_patterns(None)
    fetched = len(calls)
    assert download_models.main(["--synth-model", sdxl, "--dry-run"]) == 0 and len(calls) == fetched
    assert "models--stabilityai--stable-diffusion-xl-base-1.0" in capsys.readouterr().out
    assert download_models.main([]) == 2
    assert "name a --cascade, a --synth-model, or both" in capsys.readouterr().err

