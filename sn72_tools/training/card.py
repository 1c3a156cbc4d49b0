"""The model folder's record of how it was made: `README.md` (a Hugging Face model card) and `sn72_train.json`.

The card says what an operator or a reviewer of the submitted repository needs: the base model, the data
sources and their counts per role, the MCC and accuracy before and after on the early-stopping and fit images
(the eval tool's numbers), the verdict, the recipe, the resize mode and the date. `sn72_train.json` holds the
same, for tools.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRAIN_RECORD = "sn72_train.json"


def _number(value: Any, digits: int = 3) -> str:
    return "undef" if value is None else f"{value:.{digits}f}"


def _metrics_row(title: str, block: dict[str, Any]) -> str:
    c = block["confusion"]
    return (f"| {title} | {block['n']} | {_number(block['mcc'])} | {_number(block['accuracy'])} | "
            f"{_number(block['roc_auc'])} | {_number(block['brier'])} | {c['tn']}/{c['fp']}/{c['fn']}/{c['tp']} |")


def write_card(folder: Path, record: dict[str, Any]) -> None:
    """README.md and sn72_train.json in the model folder, from the run's record."""
    (folder / TRAIN_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    recipe = record["recipe"]
    base = record["base_model"]
    front = ["---", "library_name: transformers", "pipeline_tag: image-classification",
             "tags: [sn72, natix, roadwork, image-classification]"]
    if not Path(base).exists():  # a hub id; a local folder means nothing to the hub
        front.append(f"base_model: {base}")
    front.append("---")
    run = record["run"]
    lines = [
        *front, "",
        f"# {record['name']}: roadwork classifier for the SN72 cascade miner", "",
        f"Fine-tuned from `{base}` on {record['created']} by `sn72-train`. P(roadwork) is the softmax mass of "
        f"class {record['positive_class']} `{record['positive_label']}`; the cascade serves this folder as an "
        "`hf_classifier` expert as it is.", "",
        "## Results", "",
        f"Early stopping (dev): {record['dev_from']}; these images chose the checkpoint, so they flatter it. "
        f"Calibration fit: {record['fit_from']}; neither model learnt from these. Judged by the eval tool "
        "(`sn72-eval`) through the miner's engine; confusion is tn/fp/fn/tp after the validators' rounding.",
        "",
        "| model | images | MCC | accuracy | ROC AUC | Brier | confusion |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for part, blocks in record["judged"].items():
        for title, block in blocks.items():
            lines.append(_metrics_row(f"{title} ({part})", block))
    if record.get("verdict"):
        lines += ["", f"Verdict: {record['verdict']['text']}."]
    if record.get("agreement_max_abs") is not None:
        lines += ["", f"The engine's answers and the trainer's on the held-out images differ by at most "
                      f"{record['agreement_max_abs']:.2e} (train and serve see the same pixels)."]
    lines += ["", "## Data", "", "| source | labelled | unreadable | duplicates | conflicting labels | excluded | "
              "train (0/1) | dev (0/1) | fit (0/1) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in record["data"]:
        lines.append(f"| `{c['source']}` | {c['labelled']} | {c['unreadable']} | {c['duplicates']} | "
                     f"{c['conflicting']} | {c['excluded']} | {c['train']['0']}/{c['train']['1']} | "
                     f"{c['dev']['0']}/{c['dev']['1']} | {c['fit']['0']}/{c['fit']['1']} |")
    augment = ", ".join(recipe["augment"]) + f" (p={recipe['augment_p']})" if recipe["augment"] else "none"
    weights = record.get("class_weights")
    lines += [
        "", "## Recipe", "",
        f"- resize mode: `{record['resize']}` (recorded in `sn72_preprocess.json`; the miner uses it unless its "
        "YAML sets another)",
        f"- {'full fine-tune' if recipe['mode'] == 'full' else 'linear probe (backbone frozen)'}; "
        f"{recipe['epochs']:g} epochs planned, {run['epochs_run']:.2f} run"
        f"{' (stopped early)' if run['stopped_early'] else ''}; best checkpoint by dev {recipe['best_metric']}",
        f"- batch {recipe['batch_size']}; AdamW lr {recipe['learning_rate']:g}, cosine decay after "
        f"{recipe['warmup_ratio']:.0%} linear warm-up; weight decay {recipe['weight_decay']:g}",
        f"- label smoothing {recipe['label_smoothing']:g}; class weighting "
        + (f"on (none {weights[0]:.3f}, roadwork {weights[1]:.3f})" if weights else "off"),
        f"- augmentation: {augment}; precision {run['precision']}; seed {recipe['seed']}",
        f"- {run['train_images']} training images, {run['train_seconds']:.1f} s of training on {run['device']}",
        "", "## Serving", "", "```yaml",
        f"- name: {record['name']}", "  backend: hf_classifier", f"  model: {record['folder']}", "```", "",
        "A changed model needs the cascade's calibration fitted again, as a candidate: `sn72-train --out RUN --refit "
        "--cascade C`; `sn72-promote` then judges it against the served cascade on a frozen judge set.", "",
    ]
    (folder / "README.md").write_text("\n".join(lines))
