"""sn72-al: inspect, label, export and prune the active-learning store (`python -m sn72_tools.al.cli`).

Reading, labelling and exporting work beside a running miner (readers); pruning takes the writer's lock. The store
is the one the miner's config names (--config, or $MINER_CONFIG), or --store DIR.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from cascade.observers.al_store import ALStore, Reason, StoreError
from sn72_tools.al import export as al_export


def _reader(args: argparse.Namespace) -> ALStore:
    return ALStore(args.store, writer=False)


def resolve_store(args: argparse.Namespace) -> Path:
    """The store folder: --store, else active_learning.directory of the miner's config (--config or $MINER_CONFIG).

    NOTE: no default folder of its own: the configs keep the store elsewhere (~/.sn72-miner/al-store, .demo/...),
    and a tool that looked in ./al-store answered "no store" about a store that exists.
    """
    if args.store is not None:
        return Path(args.store)
    # Imported here: the miner's config schema lives in neurons/, which the engine's modules do not import.
    from neurons.tool_config import ToolError, load_miner_config

    if args.config is None:
        raise ToolError("which store? pass --config MINER_YAML (its active_learning.directory; or set MINER_CONFIG) "
                        "or --store DIR")
    return Path(load_miner_config(args.config).active_learning.directory)


def _cmd_stats(args: argparse.Namespace) -> int:
    from sn72_tools.al.teacher import teacher_counts

    with _reader(args) as store:
        info = al_export.summary(store)
        problems = store.integrity_check()
        teachers = teacher_counts(store)
    print("\n".join(al_export.format_summary(args.store, info, problems)))
    for source, counts in teachers.items():  # never among `labels`, which are a person's
        print(f"teacher    {source}: 0={counts['0']}, 1={counts['1']} (records with no human label)")
    return 0 if problems == ["ok"] else 1


def _cmd_list(args: argparse.Namespace) -> int:
    labelled = False if args.unlabelled else (True if args.labelled else None)
    with _reader(args) as store:
        print(al_export.LIST_HEADER)
        for record in al_export.iter_records(store, reason=args.reason, labelled=labelled, limit=args.limit):
            print(al_export.format_row(record))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from sn72_tools.al.teacher import teacher_line

    with _reader(args) as store:
        record_id = al_export.resolve(store, args.ref)
        record = None if record_id is None else al_export.get_record(store, record_id)
        taught = None if record is None else teacher_line(store, record.image_hash, record.label)
    if record is None:
        print(f"error: no record with id or sha256 {args.ref!r}", file=sys.stderr)
        return 2
    print("\n".join(al_export.format_record(record) + ([taught] if taught else [])))
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    # Imported here: labelling reads sets with the eval tool's readers, which the miner (that imports this
    # module for its observer) must not load.
    from sn72_tools.al import label as al_label

    return al_label.cmd_label(args)


def _cmd_teach(args: argparse.Namespace) -> int:
    # Imported here: teaching runs the engine through the eval tool's recorder (torch, the experts).
    from sn72_tools.al import teacher

    return teacher.cmd_teach(args)


def _cmd_unteach(args: argparse.Namespace) -> int:
    from sn72_tools.al import teacher

    return teacher.cmd_unteach(args)


def _cmd_export(args: argparse.Namespace) -> int:
    export = al_export.export_parquet if args.format == "parquet" else al_export.export_folder
    with _reader(args) as store:
        try:
            report = export(store, args.out, include_unlabelled=args.include_unlabelled, reason=args.reason,
                            progress=al_export.progress_printer(f"export {args.format}"))
        except al_export.ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    labels = ", ".join(f"{label}={n}" for label, n in sorted(report.by_label.items())) or "nothing to export"
    print(f"exported {report.written} images to {args.out} ({labels})")
    if report.missing:
        print(f"skipped {len(report.missing)} records whose image was evicted meanwhile", file=sys.stderr)
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than_days is None and args.max_items is None and args.max_bytes is None:
        print("error: give --older-than-days, --max-items and/or --max-bytes", file=sys.stderr)
        return 2
    with ALStore(args.store) as store:  # the writer: fails with StoreBusy while a miner holds the store
        dropped = al_export.prune(
            store,
            older_than_s=None if args.older_than_days is None else args.older_than_days * 86_400.0,
            max_items=args.max_items, max_bytes=args.max_bytes, dry_run=args.dry_run,
        )
        left = f"{store.items - (len(dropped) if args.dry_run else 0)} records left"
    print(f"{'would drop' if args.dry_run else 'dropped'} {len(dropped)} records; {left}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, help="store folder (default: active_learning.directory of --config)")
    from neurons.tool_config import add_config_argument  # here, not at the top: see resolve_store

    add_config_argument(common, "the store folder (active_learning.directory)")
    parser = argparse.ArgumentParser(prog="al", description="Inspect, label, export and prune the AL store.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stats", parents=[common], help="counts, sizes, integrity").set_defaults(func=_cmd_stats)
    listing = commands.add_parser("list", parents=[common], help="records, oldest first")
    listing.add_argument("--reason", choices=[r.value for r in Reason])
    group = listing.add_mutually_exclusive_group()
    group.add_argument("--unlabelled", action="store_true")
    group.add_argument("--labelled", action="store_true")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.set_defaults(func=_cmd_list)
    show = commands.add_parser("show", parents=[common], help="one record, by id or sha256")
    show.add_argument("ref")
    show.set_defaults(func=_cmd_show)
    label = commands.add_parser("label", parents=[common],
                                help="`label REF 0|1`, `label --csv FILE` or `label --folder DIR`")
    label.add_argument("ref", nargs="?", help="a record id, an image's sha256, or an image file")
    label.add_argument("value", nargs="?", type=int, choices=[0, 1], help="1 = roadwork, 0 = none")
    label.add_argument("--csv", type=Path, help="rows `ref,label`: ref an id, a sha256 or an image path (relative to "
                                                "the CSV); header optional")
    label.add_argument("--folder", type=Path, help="a labelled set as sn72-eval reads it: 0/ and 1/ or none/ and "
                                                   "roadwork/ subfolders, a path,label CSV, parquet, datasets folder")
    label.add_argument("--skip-bad", action="store_true", help="apply the good rows even if some are bad")
    label.set_defaults(func=_cmd_label)
    teach = commands.add_parser("teach", parents=[common], help="teacher labels: a cascade level's confident answers "
                                "on unlabelled records, stored apart from human labels")
    teach.add_argument("--cascade", type=Path, required=True, help="the cascade YAML whose level teaches")
    teach.add_argument("--level", help="the level that answers (default: the cascade's top level)")
    teach.add_argument("--min-confidence", type=float, default=0.95,
                       help="label where the level's calibrated p >= this (1) or <= 1 - this (0); default 0.95")
    teach.add_argument("--limit", type=int, help="ask about at most this many records (oldest first)")
    teach.add_argument("--cache", type=Path, default=Path(".eval-cache"), help="the eval tool's output cache")
    teach.add_argument("--no-progress", action="store_true")
    teach.set_defaults(func=_cmd_teach)
    unteach = commands.add_parser("unteach", parents=[common], help="drop the teacher labels of one or more sources "
                                  "(a bad teach run); their records are asked again by the next teach")
    unteach.add_argument("sources", nargs="*", help="teacher sources as `stats` prints them (teacher:<level>@<hash>)")
    unteach.add_argument("--all", action="store_true", help="every source")
    unteach.add_argument("--dry-run", action="store_true")
    unteach.set_defaults(func=_cmd_unteach)
    export = commands.add_parser("export", parents=[common], help="image folder or parquet for training")
    export.add_argument("format", choices=["folder", "parquet"])
    export.add_argument("out", type=Path, help="new folder (folder) or new .parquet file (parquet)")
    export.add_argument("--include-unlabelled", action="store_true")
    export.add_argument("--reason", choices=[r.value for r in Reason])
    export.set_defaults(func=_cmd_export)
    prune = commands.add_parser("prune", parents=[common], help="drop old unlabelled records or shrink the store")
    prune.add_argument("--older-than-days", type=float, help="drop unlabelled records not seen for this long")
    prune.add_argument("--max-items", type=int, help="evict (policy order) down to this many records")
    prune.add_argument("--max-bytes", type=al_export.parse_size, help="evict (policy order) down to this size, e.g. 5G")
    prune.add_argument("--dry-run", action="store_true")
    prune.set_defaults(func=_cmd_prune)
    return parser


def main(argv: list[str] | None = None) -> int:
    from neurons.tool_config import ToolError

    args = build_parser().parse_args(argv)
    try:
        args.store = resolve_store(args)
        return int(args.func(args))
    except (StoreError, ToolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:
        print(f"error: {exc!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
