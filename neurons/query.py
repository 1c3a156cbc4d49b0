#!/usr/bin/env python
"""Query a miner like a validator: a real dendrite, signed `ImageSynapse` requests, a timeout.

    sn72-query --wallet.name validator --miner 127.0.0.1:8091 --miner-hotkey 5F... images/
    sn72-query ... --labels labels.csv a.jpg b.jpg      # CSV: file name,label (0/1)
    sn72-query ... --synthetic 50 --concurrency 8        # generated pictures, no files

A folder with 0/ and 1/ subfolders is read as labelled. Prints one line per answer (-v), then
latency percentiles and, with labels, MCC and accuracy as validators compute them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import sys
from pathlib import Path

from neurons.client import (
    Outcome,
    accuracy,
    axon_info,
    encode_jpeg,
    make_dendrite,
    mcc,
    percentiles,
    query,
    synthetic_image,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def collect_images(paths: list[Path], labels_csv: Path | None) -> list[tuple[str, str, int]]:
    """(name, base64, label or -1) for every image file named or found under a folder."""
    labels: dict[str, int] = {}
    if labels_csv is not None:
        with labels_csv.open() as handle:
            for line_no, row in enumerate(csv.reader(handle), 1):
                if len(row) < 2 or row[1].strip() not in ("0", "1"):
                    raise SystemExit(f"{labels_csv}:{line_no}: expected 'file,0|1', got {row}")
                labels[Path(row[0].strip()).name] = int(row[1])
    items = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        for file in files:
            if not file.exists():
                raise SystemExit(f"no such image: {file}")
            label = labels.get(file.name, int(file.parent.name) if file.parent.name in ("0", "1") else -1)
            items.append((str(file), base64.b64encode(file.read_bytes()).decode(), label))
    return items


async def run(args: argparse.Namespace) -> dict[str, object]:
    import bittensor as bt

    wallet = bt.Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey, path=args.wallet_path)
    dendrite = make_dendrite(wallet, args.external_ip)
    host, port = args.miner.rsplit(":", 1)
    axon = axon_info(host, int(port), args.miner_hotkey)
    items = collect_images(args.images, args.labels)
    items += [(f"synthetic-{i}", encode_jpeg(synthetic_image(i)), -1) for i in range(args.synthetic)]
    if not items:
        raise SystemExit("no images: name files or folders, or use --synthetic N")
    items = [items[i % len(items)] for i in range(max(args.repeat, 1) * len(items))]
    semaphore = asyncio.Semaphore(args.concurrency)
    outcomes: list[Outcome | None] = [None] * len(items)

    async def one(index: int) -> None:
        name, b64, label = items[index]
        async with semaphore:
            outcome = await query(dendrite, axon, b64, args.timeout)
        outcomes[index] = outcome
        if args.verbose:
            text = f"{outcome.prediction:.4f}" if outcome.ok else f"ERROR {outcome.status_code} {outcome.message}"
            print(f"{name}\t{text}\t{outcome.latency_s * 1000:.1f} ms" + (f"\tlabel={label}" if label >= 0 else ""))

    await asyncio.gather(*(one(i) for i in range(len(items))))
    await dendrite.aclose_session()
    done = [o for o in outcomes if o is not None]
    ok = [o for o in done if o.ok]
    errors: dict[str, int] = {}
    for o in done:
        if not o.ok:
            errors[f"{o.status_code} {o.message}"[:120]] = errors.get(f"{o.status_code} {o.message}"[:120], 0) + 1
    labelled = [(item[2], o.prediction) for item, o in zip(items, outcomes, strict=True) if item[2] >= 0 and o and o.ok]
    report: dict[str, object] = {
        "requests": len(done),
        "answered": len(ok),
        "errors": errors,
        "latency_ms": {k: v * 1000 for k, v in percentiles([o.latency_s for o in done]).items()},
    }
    if labelled:
        ys, ps = [y for y, _ in labelled], [p for _, p in labelled]
        report.update({"labelled": len(labelled), "mcc": mcc(ys, ps), "accuracy": accuracy(ys, ps)})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="image files or folders")
    parser.add_argument("--wallet.name", dest="wallet_name", required=True)
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    parser.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
    parser.add_argument("--miner", required=True, help="ip:port of the miner's axon")
    parser.add_argument("--miner-hotkey", required=True, help="the miner's hotkey (ss58): requests are signed to it")
    parser.add_argument("--labels", type=Path, help="CSV of file name,label")
    parser.add_argument("--synthetic", type=int, default=0, help="also send N generated pictures")
    parser.add_argument("--repeat", type=int, default=1, help="send the whole set this many times")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=9.0, help="seconds, as validators use")
    parser.add_argument("--external-ip", default="127.0.0.1", help="our ip as the dendrite reports it (no lookup)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per answer")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if report["answered"] == report["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
