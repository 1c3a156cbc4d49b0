"""An ensemble preset end to end: train each member, put both in the served cascade's level, fit it, judge it.

    python -m sn72_lab.ensemble_recipe roadwork-train/ --preset convnext-dinov2 --cascade C.yaml \\
        --judge judge-set/ --out runs/ens1 --workers 8

The published ConvNeXt V2 + DINOv2 ensemble (MCC 0.871, docs/protocol.md) averages two fine-tuned models and
thresholds the average at a tuned point. Here each member trains with its own preset (letterbox resize: the
`sn72-*` recipe), and the eval tool's fit replaces the hand-tuned average and threshold: per-expert temperatures,
the level's weights and intercept, and the level's threshold map (the MCC-best threshold put on 0.5, kept only
when it beats 0.5 beyond noise: docs/evaluation.md, Fitting). The steps are the ordinary commands, printed as run:

    sn72-train DATA --preset sn72-convnextv2 --out OUT/convnextv2 --exclude JUDGE [--fit-data FIT]
    sn72-train DATA --preset sn72-dinov2     --out OUT/dinov2     --exclude JUDGE [--fit-data FIT]
    (C copied to OUT/ensemble/unfitted.yaml with its experts `convnextv2` and `dinov2` serving the two new models)
    sn72-eval FIT --cascade OUT/ensemble/unfitted.yaml --fit --holdout 0 --out OUT/ensemble \\
        --calibration-out OUT/ensemble/calibration.json
    sn72-promote --cascade C --candidate OUT/ensemble/candidate.yaml --judge JUDGE

C must already hold one level with an `hf_classifier` expert named after each member (sn72-promote installs new
weights and a calibration, never a new level; docs/training.md, Presets, has the level to add by hand). FIT is
--fit-data, else the fit images the two runs held out, which are the same images when both read the same DATA
with the same --seed and shares (checked: the fit must be images neither member learnt from). Exit: 0 promoted,
3 refused by the gate or a member worse than its start, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cascade.config import load_cascade
from sn72_tools.training.data import SPLIT_FILE
from sn72_tools.training.recipe import ENSEMBLES, PRESETS

BAD_INPUT, REFUSED = 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sn72_lab.ensemble_recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="+", help="labelled sets both members train on")
    parser.add_argument("--preset", choices=list(ENSEMBLES), default="convnext-dinov2", help="the ensemble preset")
    parser.add_argument("--cascade", type=Path, required=True, help="the served cascade (a level holds the members)")
    parser.add_argument("--judge", type=Path, required=True, help="the frozen judge set of sn72-promote")
    parser.add_argument("--out", type=Path, required=True, help="OUT/<member>/ per run, OUT/ensemble/ the candidate")
    parser.add_argument("--fit-data", type=Path, help="labelled set to fit the level on (default: the runs' fit set)")
    parser.add_argument("--member", action="append", default=[], metavar="NAME=MODEL",
                        help="start member NAME from MODEL (a local folder) instead of its preset's hub id")
    parser.add_argument("--train-args", default="", metavar="'FLAGS'",
                        help="more sn72-train flags for both runs, one string (e.g. '--epochs 2 --workers 8')")
    parser.add_argument("--min-fit-images", type=int, default=200, help="passed to sn72-eval --fit (default 200)")
    parser.add_argument("--eval-args", default="", metavar="'FLAGS'",
                        help="more sn72-eval --fit flags, one string (e.g. '--fit-resamples 100')")
    parser.add_argument("--promote-args", default="", metavar="'FLAGS'",
                        help="more sn72-promote flags, one string (e.g. '--dry-run --min-judge-images 100')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _show(tool: str, argv: list[str]) -> None:
    print(f"$ {tool} {' '.join(argv)}", flush=True)


def _members(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, dict[str, str]]:
    members = {name: {"preset": preset, "model": str(PRESETS[preset]["model"])}
               for name, preset in ENSEMBLES[args.preset].items()}
    for item in args.member:
        name, _, model = item.partition("=")
        if name not in members or not model:
            parser.error(f"--member {item}: expected NAME=MODEL with NAME one of {', '.join(members)}")
        members[name]["model"] = model
    return members


def _check_level(cascade: Path, names: list[str]) -> str | None:
    """Why C cannot take the members (None when one level holds an hf_classifier expert named after each)."""
    try:
        config = load_cascade(cascade)
    except (ValueError, OSError) as exc:
        return f"invalid cascade {cascade}: {str(exc).splitlines()[0]}"
    for level in config.levels:
        experts = {e.name: e.backend for e in level.experts}
        if all(experts.get(name) == "hf_classifier" for name in names):
            return None
    return (f"{cascade} has no level with hf_classifier experts named {' and '.join(names)}: add that level by hand "
            "(serving the starting models; docs/training.md, Presets), then run this again")


def _same_fit(out: Path, names: list[str]) -> str | None:
    fits = {name: sorted(json.loads((out / name / SPLIT_FILE).read_text()).get("fit", [])) for name in names}
    first = fits[names[0]]
    if not first or any(fit != first for fit in fits.values()):
        return ("the runs held out different fit images (different data, --seed or shares): give --fit-data, "
                "labelled images neither member learnt from")
    return None


def main(argv: list[str] | None = None) -> int:
    import shlex

    from sn72_tools.evaluation import cli as eval_cli
    from sn72_tools.promotion import cli as promote_cli
    from sn72_tools.promotion.candidate import write_candidate
    from sn72_tools.training import cli as train_cli

    parser = build_parser()
    args = parser.parse_args(argv)
    members = _members(args, parser)
    names = list(members)
    problem = _check_level(args.cascade, names)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return BAD_INPUT
    quiet = ["--no-progress"] if args.no_progress else []
    for name, member in members.items():
        train_argv = [*map(str, args.data), "--preset", member["preset"], "--model", member["model"], "--out",
                      str(args.out / name), "--exclude", str(args.judge), "--seed", str(args.seed),
                      *(["--fit-data", str(args.fit_data)] if args.fit_data else []),
                      *shlex.split(args.train_args), *quiet]
        _show("sn72-train", train_argv)
        code = train_cli.main(train_argv)
        if code != 0:
            print(f"member {name}: sn72-train exited {code}; no ensemble candidate", file=sys.stderr)
            return code
    if args.fit_data is None:
        problem = _same_fit(args.out, names)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return BAD_INPUT
    fit_on = args.fit_data or args.out / names[0] / "fit"
    folder = args.out / "ensemble"
    unfitted = write_candidate(args.cascade, folder, None,
                               {name: str((args.out / name / "model").resolve()) for name in names},
                               name="unfitted.yaml")
    print(f"wrote {unfitted}: {args.cascade} with {', '.join(names)} serving the new models")
    eval_argv = [str(fit_on), "--cascade", str(unfitted), "--fit", "--holdout", "0", "--out", str(folder),
                 "--calibration-out", str(folder / "calibration.json"), "--cache", str(args.out / "eval-cache"),
                 "--min-fit-images", str(args.min_fit_images), "--seed", str(args.seed),
                 *shlex.split(args.eval_args), *quiet]
    _show("sn72-eval", eval_argv)
    code = eval_cli.main(eval_argv)
    if code != 0:
        return code
    promote_argv = ["--cascade", str(args.cascade), "--candidate", str(folder / "candidate.yaml"), "--judge",
                    str(args.judge), "--cache", str(args.out / "eval-cache"), "--seed", str(args.seed),
                    *shlex.split(args.promote_args), *quiet]
    _show("sn72-promote", promote_argv)
    return promote_cli.main(promote_argv)


if __name__ == "__main__":
    sys.exit(main())
