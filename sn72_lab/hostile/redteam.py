"""Red-team a miner: every attack of the catalogue, while an honest validator keeps asking.

    sn72-redteam --full --out DIR [--source CHECKOUT]   # an offline miner started here, attacked at full size
    sn72-redteam --miner 127.0.0.1:8091 --miner-hotkey 5F... --wallet.path W --validator validator \\
        --attacker attacker [--non-validator peer] [--pid PID] [--metrics URL] [--json report.json] [--full]
    sn72-redteam --setup-offline DIR     # wallets, metagraph, tiny models and a miner YAML to attack offline
    sn72-redteam --compare BEFORE.json AFTER.json [--markdown OUT.md]
    sn72-redteam --list                  # the catalogue

For each attack: the expected status and the statuses seen, whether the miner is alive after, and the line it must
pass (set by the second red-team pass, each bound a flag): the honest validator's share of requests answered in time
with a model answer (a 200 carrying the prior is a miss) >= 99%, the p99 of its requests <= 1 s, no 500, and the
miner's peak resident memory during the attack at most 300 MB above its level at the start (with --pid: psutil, with
the fd peak). The honest validator sends signed requests through a real bittensor dendrite, --validator-rate per
second, open loop. The attacker wallet should be a second registered validator (an insider: it reaches the body
parser); strangers are generated keys. Exit code 0 when every attack passed, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress

from sn72_lab.hostile.measure import PassLine, ResourceSampler
from sn72_lab.hostile.report import Row, before_after, markdown, table, why_not

if TYPE_CHECKING:  # importing bittensor creates ~/.bittensor: nothing heavy before the arguments are parsed
    from sn72_lab.hostile.model import Context
    from sn72_lab.hostile.wire import Target

console = Console(stderr=True)


class UsageError(ValueError):
    """Bad input from the command line: one line, no traceback."""


def resident_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def alive(target: Target, pid: int | None) -> bool:
    if pid is not None:
        try:
            state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                         if line.startswith("State:"))
        except (OSError, StopIteration):
            return False
        if "zombie" in state or "dead" in state:
            return False
    try:
        with socket.create_connection((target.host, target.port), timeout=3.0):
            return True
    except OSError:
        return False


def count_lines(path: Path | None) -> int | None:
    if path is None:
        return None
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def run_attacks(context: Context, validator_wallet: Any, pid: int | None, names: list[str], window_s: float,
                rate_per_s: float, miner_log: Path | None = None, line: PassLine | None = None,
                prior: float | None = 0.5, signers: list[Any] | None = None) -> list[Row]:
    """Each attack in turn beside the honest validator. `signers` (registered validator keys) take turns as the
    attacker, one per attack: an attack that spends its signer's rate bucket (a signed flood, slow bodies that pass
    verification) must not turn the next attack's requests into 429s that measure nothing."""
    from dataclasses import replace

    from sn72_lab.hostile.catalogue import catalogue
    from sn72_lab.hostile.load import ValidatorLoad

    line = line or PassLine()
    attacks = [a for a in catalogue() if a.name in names]
    rows: list[Row] = []
    with ValidatorLoad(validator_wallet, context.target, rate_per_s=rate_per_s, prior=prior) as load, Progress(
            console=console, transient=True) as progress:
        task = progress.add_task("attacks", total=len(attacks))
        for turn, attack in enumerate(attacks):
            progress.update(task, description=attack.name)
            attacked = replace(context, attacker=signers[turn % len(signers)]) if signers else context
            lines_before = count_lines(miner_log)
            sampler = ResourceSampler(pid) if pid is not None else None
            started_s = time.monotonic()
            with sampler or contextlib.nullcontext():
                observation = asyncio.run(attack.observe(attacked))
                elapsed_s = time.monotonic() - started_s
                time.sleep(max(0.0, started_s + window_s - time.monotonic()))
                stats = load.stats(started_s, time.monotonic())
            peaks = sampler.peaks if sampler is not None else None
            up = alive(context.target, pid)
            lines_after = count_lines(miner_log)
            logged = None if lines_before is None or lines_after is None else lines_after - lines_before
            server_errors = sum(1 for r in observation.replies if r.status == 500) + stats.server_errors
            peak_growth = None if peaks is None else peaks.peak_growth_mb
            failures = line.failures(stats.model_share, stats.latency_p99_ms, server_errors, peak_growth)
            rows.append(Row(attack.name, attack.how, attack.expected_text, observation.statuses(),
                            not observation.problems and up and not failures, observation.problems, up,
                            None if peaks is None else peaks.kept_mb, logged, stats.sent, stats.answered,
                            stats.p50_ms, stats.p99_ms, elapsed_s, stats.model_share, stats.latency_p50_ms,
                            stats.latency_p99_ms, server_errors, peak_growth,
                            None if peaks is None else peaks.peak_fds, failures))
            row = rows[-1]
            progress.console.print(f"{len(rows)}/{len(attacks)} {row.attack}: {row.seen[:60]} "
                                   f"({'ok' if row.passed else 'NOT OK'}), validator model answers "
                                   f"{stats.model_answered}/{stats.sent}, p99 {stats.latency_p99_ms:.0f} ms",
                                   highlight=False)
            progress.advance(task)
    return rows


def open_wallet(path: str, name: str) -> Any:
    import bittensor as bt

    wallet = bt.Wallet(name=name, hotkey="default", path=path)
    try:
        wallet.hotkey.ss58_address  # noqa: B018 - opening the key file is the check
    except Exception as exc:  # bittensor-wallet raises several types for a missing key
        raise UsageError(f"cannot open the hotkey of wallet {name!r} under {path}: {exc}") from exc
    return wallet


def parse_miner(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--miner must be host:port, got {value!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sn72-redteam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miner", help="host:port of the miner's axon")
    parser.add_argument("--miner-hotkey", help="the miner's hotkey (SS58), as validators sign for it")
    parser.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
    parser.add_argument("--validator", help="wallet name of a registered validator: the honest traffic")
    parser.add_argument("--attacker", help="wallet name(s), comma-separated, of other registered validators: they "
                        "sign hostile requests, taking turns by attack (several keep a spent rate bucket from one "
                        "attack out of the next)")
    parser.add_argument("--non-validator", help="wallet name of a registered key without a validator permit")
    parser.add_argument("--pid", type=int, help="the miner's process id: RSS and fd peaks (psutil, same machine)")
    parser.add_argument("--miner-log", type=Path, help="the miner's log file: lines it writes per attack")
    parser.add_argument("--metrics", help="the miner's Prometheus URL (http://HOST:PORT/metrics): accounting checks")
    parser.add_argument("--prior", type=float, default=0.5,
                        help="the miner's cascade prior: a 200 with exactly this prediction is not a model answer")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write redteam.json and redteam.md here; without --miner, set up an offline miner under "
                        "DIR/target, start it (from --source), attack it and stop it")
    parser.add_argument("--source", type=Path, default=Path.cwd(),
                        help="with --out and no --miner: the checkout whose miner is started (default: here)")
    parser.add_argument("--processes", type=int, default=None,
                        help="with --out and no --miner: the started miner's axon.processes (front processes)")
    parser.add_argument("--full", action="store_true",
                        help="full-size attacks (the sizes and durations of docs/security.md's second pass; "
                        "minutes); default: small ones")
    parser.add_argument("--only", help="comma-separated attack names")
    parser.add_argument("--skip", help="comma-separated attack names to leave out")
    parser.add_argument("--window-s", type=float, default=3.0, help="each attack is measured over at least this")
    parser.add_argument("--validator-rate", type=float, default=1.0, help="honest requests per second")
    parser.add_argument("--attacker-ip", default="127.0.0.2", help="local address for connection-heavy attacks")
    parser.add_argument("--slow-give-up-s", type=float, default=15.0, help="slow clients stop after this")
    parser.add_argument("--max-connections-per-ip", type=int, help="the miner's cap, to check prompt closing")
    parser.add_argument("--flood-s", type=float, default=20.0, help="duration of the spoofed flood")
    parser.add_argument("--burst", type=float, default=20.0, help="the miner's guards.burst")
    line = parser.add_argument_group("the line each attack must pass (the second pass's defaults, docs/security.md)")
    line.add_argument("--line-model-share", type=float, default=PassLine.min_model_share,
                      help="least share of honest requests answered in time with a model answer")
    line.add_argument("--line-p99-ms", type=float, default=PassLine.max_p99_ms, help="largest honest p99")
    line.add_argument("--line-500s", type=int, default=PassLine.max_server_errors, help="most 500s")
    line.add_argument("--line-rss-mb", type=float, default=PassLine.max_rss_growth_mb,
                      help="largest peak resident memory growth of the miner during one attack")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"),
                        help="two reports (--json) side by side as Markdown (to --markdown, or stdout), then exit")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument("--setup-offline", type=Path, metavar="DIR",
                        help="write wallets, metagraph, tiny models and a miner YAML to attack offline, then exit")
    return parser


def selected(args: argparse.Namespace) -> list[str]:
    from sn72_lab.hostile.catalogue import catalogue

    names = [a.name for a in catalogue()]
    only = [n.strip() for n in args.only.split(",")] if args.only else names
    skip = {n.strip() for n in args.skip.split(",")} if args.skip else set()
    unknown = sorted((set(only) | skip) - set(names))
    if unknown:
        raise UsageError(f"unknown attack(s) {', '.join(unknown)}; --list shows the catalogue")
    return [n for n in names if n in only and n not in skip]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def pass_line(args: argparse.Namespace) -> PassLine:
    return PassLine(args.line_model_share, args.line_p99_ms, args.line_500s, args.line_rss_mb)


def run(args: argparse.Namespace) -> int:
    from sn72_lab.hostile.catalogue import catalogue

    if args.list:
        for attack in catalogue():
            print(f"{attack.name:38} {attack.expected_text:16} {attack.how}")
        return 0
    if args.compare:
        return compare(args.compare[0], args.compare[1], args.markdown)
    if args.setup_offline:
        from sn72_lab.hostile.setup import setup_offline

        print(setup_offline(args.setup_offline.resolve()))
        return 0
    if args.out is not None and not args.miner:
        return attack_own_miner(args)
    missing = [flag for flag, value in (("--miner", args.miner), ("--miner-hotkey", args.miner_hotkey),
                                        ("--validator", args.validator), ("--attacker", args.attacker)) if not value]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (see --help, or --out DIR alone for an offline miner)")
    names = selected(args)
    host, port = parse_miner(args.miner)
    if args.pid is not None and not Path(f"/proc/{args.pid}").exists():
        raise UsageError(f"no process {args.pid} on this machine")
    if args.miner_log is not None and not args.miner_log.is_file():
        raise UsageError(f"--miner-log {args.miner_log} is not a file")
    path = os.path.expanduser(args.wallet_path)
    validator = open_wallet(path, args.validator)
    attackers = [open_wallet(path, name.strip()).hotkey for name in args.attacker.split(",") if name.strip()]
    non_validator = open_wallet(path, args.non_validator).hotkey if args.non_validator else None
    return red_team(args, names, validator, attackers, non_validator, host, port, args.miner_hotkey, args.pid)


def compare(before: Path, after: Path, markdown_path: Path | None) -> int:
    try:
        reports = [json.loads(path.read_text()) for path in (before, after)]
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read a report: {exc}") from exc
    text = before_after(*reports) + "\n"
    if markdown_path:
        markdown_path.write_text(text)
    else:
        print(text, end="")
    return 0


def attack_own_miner(args: argparse.Namespace) -> int:
    from sn72_lab.hostile.own_miner import own_miner
    from sn72_lab.hostile.target import TEST_HTTP_LIMITS

    names = selected(args)
    source = args.source.resolve()
    if not (source / "neurons" / "miner.py").is_file():
        raise UsageError(f"--source {source} holds no neurons/miner.py")
    args.out.mkdir(parents=True, exist_ok=True)
    with own_miner(args.out.resolve() / "target", source, processes=args.processes) as miner:
        args.miner_log = miner.log
        args.metrics = args.metrics or f"http://127.0.0.1:{miner.metrics_port}/metrics"
        args.max_connections_per_ip = args.max_connections_per_ip or TEST_HTTP_LIMITS["max_connections_per_ip"]
        args.miner = f"127.0.0.1:{miner.port}"
        console.print(f"miner from {source} (pid {miner.pid}) on {args.miner}, log {miner.log}")
        attackers = [miner.cast.attacker.hotkey, *miner.cast.probers]
        return red_team(args, names, miner.cast.validator, attackers, miner.cast.non_validator.hotkey,
                      "127.0.0.1", miner.port, miner.cast.miner.hotkey.ss58_address, miner.pid, source=source)


def commit_of(source: Path) -> str | None:
    import subprocess

    done = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def red_team(args: argparse.Namespace, names: list[str], validator: Any, attackers: list[Any], non_validator: Any,
             host: str,
           port: int, miner_hotkey: str, pid: int | None, source: Path | None = None) -> int:
    import resource

    from bittensor_wallet import Keypair

    from sn72_lab.hostile.model import Context
    from sn72_lab.hostile.wire import Target

    # Connection-heavy attacks hold thousands of sockets on this side too.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    target = Target(host, port, miner_hotkey)
    if not alive(target, pid):
        raise UsageError(f"nothing answers on {host}:{port}")
    context = Context(target, validator.hotkey.ss58_address, attackers[0],
                      Keypair.create_from_mnemonic(Keypair.generate_mnemonic()), non_validator,
                      attacker_ip=args.attacker_ip, slow_give_up_s=args.slow_give_up_s,
                      max_connections_per_ip=args.max_connections_per_ip, flood_s=args.flood_s, burst=args.burst,
                      full=args.full, metrics_url=args.metrics)
    line = pass_line(args)
    first_mb = resident_mb(pid)
    rows = run_attacks(context, validator, pid, names, args.window_s, args.validator_rate, args.miner_log, line,
                       args.prior, attackers)
    last_mb = resident_mb(pid)
    total = None if first_mb is None or last_mb is None else last_mb - first_mb
    out = Console()
    out.width = max(out.width, 180)  # a pipe reports 80 columns: keep one row per attack
    out.print(table(rows, total))
    for problem in why_not(rows):
        console.print(f"[yellow]{problem}[/]", highlight=False)
    passed = sum(r.passed for r in rows)
    console.print(f"{passed} of {len(rows)} attacks passed (line: {line})", highlight=False)
    report = {"miner": args.miner, "size": "full" if args.full else "small", "line": line.as_dict(),
              "source": None if source is None else str(source),
              "commit": None if source is None else commit_of(source), "window_s": args.window_s,
              "validator_rate_per_s": args.validator_rate, "rss_growth_mb": total, "passed": passed,
              "attacks": [{**asdict(r), "line_passed": r.line_passed} for r in rows]}
    json_path = args.json or (args.out / "redteam.json" if args.out else None)
    markdown_path = args.markdown or (args.out / "redteam.md" if args.out else None)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    if markdown_path:
        markdown_path.write_text(markdown(rows) + "\n")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
