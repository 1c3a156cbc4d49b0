"""Red-team a running miner: every attack of the catalogue, while an honest validator keeps asking.

    sn72-redteam --miner 127.0.0.1:8091 --miner-hotkey 5F... --wallet.path W --validator validator \\
        --attacker attacker [--non-validator peer] [--pid PID] [--json report.json]
    sn72-redteam --setup-offline DIR     # wallets, metagraph, tiny models and a miner YAML to attack offline
    sn72-redteam --list                  # the catalogue

For each attack: the expected status, the statuses seen, whether the miner is alive after, its resident memory
growth (/proc/PID/status VmRSS, with --pid), and the honest validator's answer rate and p50/p99 latency while the
attack ran (signed requests through a real bittensor dendrite, --validator-rate per second, open loop). The
attacker wallet should be a second registered validator (an insider: it reaches the body parser); strangers are
generated keys. Exit code 0 when every attack got an expected answer and the miner stayed up, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

if TYPE_CHECKING:  # importing bittensor creates ~/.bittensor: nothing heavy before the arguments are parsed
    from neurons.hostile.model import Context
    from neurons.hostile.wire import Target

console = Console(stderr=True)


class UsageError(ValueError):
    """Bad input from the command line: one line, no traceback."""


@dataclass
class Row:
    attack: str
    how: str
    expected: str
    seen: str
    passed: bool
    problems: list[str]
    alive: bool
    rss_growth_mb: float | None
    log_lines: int | None  # lines the miner logged during the attack (with --miner-log)
    validator_sent: int
    validator_answered: int
    validator_p50_ms: float
    validator_p99_ms: float
    elapsed_s: float


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
                rate_per_s: float, miner_log: Path | None = None) -> list[Row]:
    from neurons.hostile.catalogue import catalogue
    from neurons.hostile.load import ValidatorLoad

    attacks = [a for a in catalogue() if a.name in names]
    rows: list[Row] = []
    with ValidatorLoad(validator_wallet, context.target, rate_per_s=rate_per_s) as load, Progress(
            console=console, transient=True) as progress:
        task = progress.add_task("attacks", total=len(attacks))
        for attack in attacks:
            progress.update(task, description=attack.name)
            before_mb, lines_before = resident_mb(pid), count_lines(miner_log)
            started_s = time.monotonic()
            observation = asyncio.run(attack.observe(context))
            elapsed_s = time.monotonic() - started_s
            time.sleep(max(0.0, started_s + window_s - time.monotonic()))
            stats = load.stats(started_s, time.monotonic())
            after_mb = resident_mb(pid)
            up = alive(context.target, pid)
            growth = None if before_mb is None or after_mb is None else after_mb - before_mb
            lines_after = count_lines(miner_log)
            logged = None if lines_before is None or lines_after is None else lines_after - lines_before
            rows.append(Row(attack.name, attack.how, attack.expected_text, observation.statuses(),
                            not observation.problems and up, observation.problems, up, growth, logged, stats.sent,
                            stats.answered, stats.p50_ms, stats.p99_ms, elapsed_s))
            row = rows[-1]
            progress.console.print(f"{len(rows)}/{len(attacks)} {row.attack}: {row.seen} "
                                   f"({'ok' if row.passed else 'NOT OK'}), validator "
                                   f"{row.validator_answered}/{row.validator_sent}", highlight=False)
            progress.advance(task)
    return rows


def table(rows: list[Row], total_growth_mb: float | None) -> Table:
    overall = "" if total_growth_mb is None else f" (resident memory growth overall {total_growth_mb:+.0f} MB)"
    out = Table(title="red team" + overall)
    for column in ("attack", "expected", "seen", "ok", "alive", "RSS MB", "log lines", "validator", "p50 ms",
                   "p99 ms"):
        out.add_column(column, no_wrap=True)
    for r in rows:
        out.add_row(r.attack, r.expected, r.seen, "yes" if r.passed else "NO", "yes" if r.alive else "NO",
                    "-" if r.rss_growth_mb is None else f"{r.rss_growth_mb:+.0f}",
                    "-" if r.log_lines is None else str(r.log_lines),
                    f"{r.validator_answered}/{r.validator_sent}", f"{r.validator_p50_ms:.0f}",
                    f"{r.validator_p99_ms:.0f}")
    return out


def markdown(rows: list[Row]) -> str:
    """The table as Markdown, for docs/security.md."""
    lines = ["| attack | expected | seen | ok | alive | RSS growth MB | log lines | validator answered | "
             "p50 / p99 ms |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        growth = "-" if r.rss_growth_mb is None else f"{r.rss_growth_mb:+.0f}"
        logged = "-" if r.log_lines is None else str(r.log_lines)
        latency = "-" if not r.validator_answered else f"{r.validator_p50_ms:.0f} / {r.validator_p99_ms:.0f}"
        lines.append(f"| {r.attack} | {r.expected} | {r.seen} | {'yes' if r.passed else '**no**'} | "
                     f"{'yes' if r.alive else '**no**'} | {growth} | {logged} | "
                     f"{r.validator_answered}/{r.validator_sent} | {latency} |")
    return "\n".join(lines)


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
    parser.add_argument("--attacker", help="wallet name of another registered validator: signs hostile requests")
    parser.add_argument("--non-validator", help="wallet name of a registered key without a validator permit")
    parser.add_argument("--pid", type=int, help="the miner's process id, for resident memory (same machine)")
    parser.add_argument("--miner-log", type=Path, help="the miner's log file: lines it writes per attack")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    parser.add_argument("--only", help="comma-separated attack names")
    parser.add_argument("--skip", help="comma-separated attack names to leave out")
    parser.add_argument("--window-s", type=float, default=3.0, help="each attack is measured over at least this")
    parser.add_argument("--validator-rate", type=float, default=1.0, help="honest requests per second")
    parser.add_argument("--attacker-ip", default="127.0.0.2", help="local address for connection-heavy attacks")
    parser.add_argument("--slow-give-up-s", type=float, default=15.0, help="slow clients stop after this")
    parser.add_argument("--max-connections-per-ip", type=int, help="the miner's cap, to check prompt closing")
    parser.add_argument("--flood-s", type=float, default=20.0, help="duration of the spoofed flood")
    parser.add_argument("--burst", type=float, default=20.0, help="the miner's guards.burst")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument("--setup-offline", type=Path, metavar="DIR",
                        help="write wallets, metagraph, tiny models and a miner YAML to attack offline, then exit")
    return parser


def selected(args: argparse.Namespace) -> list[str]:
    from neurons.hostile.catalogue import catalogue

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


def run(args: argparse.Namespace) -> int:
    from neurons.hostile.catalogue import catalogue
    from neurons.hostile.model import Context
    from neurons.hostile.wire import Target

    if args.list:
        for attack in catalogue():
            print(f"{attack.name:32} {attack.expected_text:12} {attack.how}")
        return 0
    if args.setup_offline:
        from neurons.hostile.setup import setup_offline

        print(setup_offline(args.setup_offline.resolve()))
        return 0
    missing = [flag for flag, value in (("--miner", args.miner), ("--miner-hotkey", args.miner_hotkey),
                                        ("--validator", args.validator), ("--attacker", args.attacker)) if not value]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (see --help)")
    names = selected(args)
    host, port = parse_miner(args.miner)
    if args.pid is not None and not Path(f"/proc/{args.pid}").exists():
        raise UsageError(f"no process {args.pid} on this machine")
    if args.miner_log is not None and not args.miner_log.is_file():
        raise UsageError(f"--miner-log {args.miner_log} is not a file")
    path = os.path.expanduser(args.wallet_path)
    validator, attacker = open_wallet(path, args.validator), open_wallet(path, args.attacker)
    non_validator = open_wallet(path, args.non_validator).hotkey if args.non_validator else None
    from bittensor_wallet import Keypair

    target = Target(host, port, args.miner_hotkey)
    if not alive(target, args.pid):
        raise UsageError(f"nothing answers on {host}:{port}")
    context = Context(target, validator.hotkey.ss58_address, attacker.hotkey,
                      Keypair.create_from_mnemonic(Keypair.generate_mnemonic()), non_validator,
                      attacker_ip=args.attacker_ip, slow_give_up_s=args.slow_give_up_s,
                      max_connections_per_ip=args.max_connections_per_ip, flood_s=args.flood_s, burst=args.burst)
    first_mb = resident_mb(args.pid)
    rows = run_attacks(context, validator, args.pid, names, args.window_s, args.validator_rate, args.miner_log)
    last_mb = resident_mb(args.pid)
    total = None if first_mb is None or last_mb is None else last_mb - first_mb
    out = Console()
    out.width = max(out.width, 160)  # a pipe reports 80 columns: keep one row per attack
    out.print(table(rows, total))
    for row in rows:
        for problem in row.problems:
            console.print(f"[yellow]{row.attack}[/]: {problem}")
    if args.json:
        args.json.write_text(json.dumps({"miner": args.miner, "window_s": args.window_s,
                                         "validator_rate_per_s": args.validator_rate, "rss_growth_mb": total,
                                         "attacks": [asdict(r) for r in rows]}, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(rows) + "\n")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
