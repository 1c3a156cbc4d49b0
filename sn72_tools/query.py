#!/usr/bin/env python
"""Query a miner like a validator: a real dendrite, signed `ImageSynapse` requests, a timeout.

    sn72-query --wallet.name validator --miner 127.0.0.1:8091 --miner-hotkey 5F... roadwork-test/
    sn72-query ... labels.csv                            # header path,label, as sn72-eval reads it
    sn72-query ... --labels names.csv a.jpg b.jpg        # rows: file name,label
    sn72-query ... --synthetic 50 --concurrency 8        # generated pictures, no files
    sn72-query ... roadwork-test/ --predictions run.csv  # one row per request, for paired comparisons
    sn72-query --wallet.name validator --config config/miner.production.yaml --synthetic 8   # this box's miner

Labelled sets are read as sn72-eval reads them: 0/ and 1/ or none/ and roadwork/ folders, a CSV with a
path,label header, parquet, a `datasets` folder. Plain images and folders without that layout are sent
unlabelled. Requests are paced (--rate, per second, default 4: below the miner's default per-hotkey limit of
5/s) and a 429 (the miner's rate limit) is retried with backoff. Prints one line per answer (-v), then latency
percentiles and, with labels, how many were answered and missed, MCC and accuracy over the answered ones and
with each miss counted as a wrong answer. With --config (the miner's YAML, default $MINER_CONFIG) the miner's
address and hotkey come from it: axon.port on this machine, the hotkey of its wallet. Exit codes: 0 every request
answered; 1 some went unanswered; 2 usage or a wallet to fix (one line says which file and how).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from neurons.tool_config import ToolError, add_config_argument, load_miner_config, open_wallet
from sn72_tools.client import (
    RATE_LIMITED,
    Outcome,
    Pacer,
    axon_info,
    encode_jpeg,
    make_dendrite,
    percentiles,
    query_paced,
    synthetic_image,
)
from sn72_tools.query_sets import QueryImage, collect, label_scores

PREDICTION_FIELDS = ("name", "sha256", "label", "prediction", "status_code", "latency_ms")


def _synthetic(index: int) -> QueryImage:
    data = base64.b64decode(encode_jpeg(synthetic_image(index)))
    return QueryImage(f"synthetic-{index}", -1, lambda: data)


class Sent:
    """One request's image, answer and 429 retries (filled in as it completes)."""

    def __init__(self, image: QueryImage) -> None:
        self.image = image
        self.sha256 = ""
        self.outcome: Outcome | None = None
        self.retried = 0
        self.unreadable = ""  # why the image could not be read (nothing was sent)


async def run(args: argparse.Namespace) -> dict[str, object]:
    images, notes = collect(args.images, args.labels)
    images += [_synthetic(i) for i in range(args.synthetic)]
    if not images:
        raise SystemExit("no images: name files, folders or labelled sets, or use --synthetic N")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    wallet = open_wallet(args.wallet_name, args.wallet_hotkey, args.wallet_path, "--wallet")
    dendrite = make_dendrite(wallet, args.external_ip)
    host, port = args.miner.rsplit(":", 1)
    axon = axon_info(host, int(port), args.miner_hotkey)
    sent = [Sent(images[i % len(images)]) for i in range(max(args.repeat, 1) * len(images))]
    semaphore, pacer = asyncio.Semaphore(args.concurrency), Pacer(args.rate)

    async def one(request: Sent) -> None:
        async with semaphore:  # read inside: only `concurrency` images are held at once, whatever the set's size
            try:
                data = request.image.read()
            except OSError as exc:
                request.unreadable = f"unreadable image: {exc.strerror or exc}"
                print(f"{request.image.name}\t{request.unreadable}", file=sys.stderr)
                return
            request.sha256 = hashlib.sha256(data).hexdigest()
            request.outcome, request.retried = await query_paced(
                dendrite, axon, base64.b64encode(data).decode(), args.timeout, pacer, args.retries, args.backoff)
        if args.verbose:
            outcome, label = request.outcome, request.image.label
            text = f"{outcome.prediction:.4f}" if outcome.ok else f"ERROR {outcome.status_code} {outcome.message}"
            print(f"{request.image.name}\t{text}\t{outcome.latency_s * 1000:.1f} ms" +
                  (f"\tlabel={label}" if label >= 0 else ""))

    try:
        await asyncio.gather(*(one(request) for request in sent))
    finally:
        await dendrite.aclose_session()
    if args.predictions is not None:
        write_predictions(args.predictions, sent)
    return report(sent, args.rate)


def report(sent: list[Sent], rate: float) -> dict[str, object]:
    done = [r.outcome for r in sent if r.outcome is not None]
    errors: dict[str, int] = {}
    for request in sent:
        outcome = request.outcome
        if outcome is None or not outcome.ok:
            key = f"{outcome.status_code} {outcome.message}"[:120] if outcome is not None else request.unreadable
            errors[key] = errors.get(key, 0) + 1
    result: dict[str, Any] = {
        "requests": len(sent),
        "answered": sum(o.ok for o in done),
        "errors": errors,
        "latency_ms": {k: v * 1000 for k, v in percentiles([o.latency_s for o in done]).items()},
        "rate_per_s": rate,
        # 429s retried, and requests still refused for the rate limit once their retries ran out
        "rate_limited_retries": sum(r.retried for r in sent),
        "rate_limited_gave_up": sum(o.status_code == RATE_LIMITED for o in done),
    }
    pairs = [(r.image.label, r.outcome.prediction if r.outcome is not None and r.outcome.ok else None)
             for r in sent if r.image.label >= 0]
    if pairs:
        result.update(label_scores(pairs))
    return result


def write_predictions(path: Path, sent: list[Sent]) -> None:
    """One row per request: name, sha256 of the image bytes, label (-1: unknown), prediction (-1: none), HTTP status
    (0: nothing came back, or nothing was sent), latency in ms."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_FIELDS)
        for request in sent:
            outcome = request.outcome
            answered = outcome is not None and outcome.ok
            writer.writerow([
                request.image.name, request.sha256, request.image.label,
                f"{outcome.prediction:.6f}" if outcome is not None and answered else "-1",
                outcome.status_code if outcome is not None else 0,
                f"{outcome.latency_s * 1000:.2f}" if outcome is not None else "",
            ])


def miner_target(args: argparse.Namespace) -> tuple[str, str]:
    """(ip:port, hotkey ss58) of the miner to query: the flags, else the miner's config (this machine's axon)."""
    miner, hotkey = args.miner, args.miner_hotkey
    if (miner is None or hotkey is None) and args.config is not None:
        config = load_miner_config(args.config)
        if miner is None:
            host = config.axon.host if config.axon.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            miner = f"{host}:{config.axon.port}"
        if hotkey is None:
            wallet = open_wallet(config.wallet.name, config.wallet.hotkey, config.wallet.path,
                                 f"the miner's wallet (from --config {args.config})")
            hotkey = wallet.hotkey.ss58_address
    if miner is None or hotkey is None:
        raise ToolError("name the miner: --miner IP:PORT and --miner-hotkey SS58, or --config MINER_YAML")
    return miner, hotkey


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="image files, folders, or labelled sets")
    parser.add_argument("--wallet.name", dest="wallet_name", required=True,
                        help="the wallet that signs (a validator's)")
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    parser.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
    parser.add_argument("--miner", help="ip:port of the miner's axon (default: axon.port of --config, on this machine)")
    parser.add_argument("--miner-hotkey", help="the miner's hotkey (ss58): requests are signed to it (default: the "
                                               "hotkey of the --config's wallet)")
    add_config_argument(parser, "the miner's axon port and hotkey")
    parser.add_argument("--labels", type=Path, help="CSV of file name,label for plain images (header optional)")
    parser.add_argument("--synthetic", type=int, default=0, help="also send N generated pictures")
    parser.add_argument("--repeat", type=int, default=1, help="send the whole set this many times")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=4.0,
                        help="requests started per second (default 4, under the miner's default 5/s per hotkey; "
                             "0: unpaced)")
    parser.add_argument("--retries", type=int, default=3, help="times a 429 (rate limited) is retried (default 3)")
    parser.add_argument("--backoff", type=float, default=0.5,
                        help="seconds before the first retry of a 429, doubled for each next one (default 0.5)")
    parser.add_argument("--timeout", type=float, default=9.0, help="seconds, as validators use")
    parser.add_argument("--external-ip", default="127.0.0.1", help="our ip as the dendrite reports it (no lookup)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--predictions", type=Path,
                        help="write one CSV row per request: " + ",".join(PREDICTION_FIELDS))
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per answer")
    args = parser.parse_args(argv)
    if args.rate < 0 or args.retries < 0 or args.backoff < 0 or args.concurrency < 1:
        parser.error("--rate, --retries and --backoff must be >= 0, --concurrency >= 1")
    try:
        args.miner, args.miner_hotkey = miner_target(args)
        result = asyncio.run(run(args))
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if result["answered"] == result["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
