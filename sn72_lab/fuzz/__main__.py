"""`python -m sn72_lab.fuzz --minutes 5`: fuzz the request path of a miner served in process (see __init__).

With atheris installed (`pip install atheris`) the run is coverage-guided (libFuzzer over the instrumented HTTP
layer, axon, verification and decoder); without it, hypothesis draws the inputs. A failure prints the request and
the answer, and leaves the input in a file that `--reproduce FILE` sends again. Exit code 0: no failure within the
time; 1: a failure; 2: a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

# What atheris instruments (modules imported after it starts): the code a request runs through, never torch.
INSTRUMENTED = ["neurons", "cascade", "h11", "uvicorn.protocols", "starlette", "fastapi", "bittensor.core.axon",
                "bittensor.core.synapse", "PIL", "pybase64"]
HEALTH_EVERY = 500  # inputs between checks that a plain validator request is still answered


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sn72_lab.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto",
                        help="auto: atheris where installed, hypothesis otherwise")
    parser.add_argument("--corpus", type=Path, help="folder of inputs kept between runs (atheris: its corpus; "
                        "hypothesis: its example database)")
    parser.add_argument("--failures", type=Path, default=Path("fuzz-failures"),
                        help="folder for the inputs of failures (atheris; default ./fuzz-failures)")
    parser.add_argument("--reproduce", type=Path, nargs="+", metavar="FILE", help="send these saved inputs once")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.engine == "atheris" and importlib.util.find_spec("atheris") is None:
        parser.error("atheris is not installed (pip install atheris), or use --engine hypothesis")
    return args


def target() -> Any:
    from sn72_lab.fuzz.target import FuzzTarget

    return FuzzTarget()


def reproduce(files: list[Path]) -> int:
    fuzz = target()
    failed = 0
    try:
        for file in files:
            try:
                response = fuzz.check(file.read_bytes())
                print(f"{file}: ok ({response.status})")
            except AssertionError as exc:
                failed += 1
                print(f"{file}: FAILED: {exc}")
    finally:
        fuzz.close()
    return 1 if failed else 0


def run_atheris(args: argparse.Namespace) -> int:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        fuzz = target()
    print(f"atheris: coverage-guided for {args.minutes:g} min against 127.0.0.1:{fuzz.target.port}", flush=True)

    def one_input(data: bytes) -> None:
        fuzz.check(data)
        if fuzz.sent % HEALTH_EVERY == 0:
            assert fuzz.healthy(), "the miner no longer answers a plain validator request"

    options = [sys.argv[0], f"-max_total_time={max(1, round(args.minutes * 60))}", "-timeout=30", "-rss_limit_mb=0",
               "-max_len=4096", "-len_control=0", "-print_final_stats=1", f"-artifact_prefix={args.failures}/"]
    args.failures.mkdir(parents=True, exist_ok=True)
    if args.corpus is not None:
        args.corpus.mkdir(parents=True, exist_ok=True)
        options.append(str(args.corpus))
    atheris.Setup(options, one_input)
    atheris.Fuzz()  # exits the process itself: 0 when the time is up, non-zero with a crash file on a failure
    return 0


def run_hypothesis(args: argparse.Namespace) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.database import DirectoryBasedExampleDatabase

    fuzz = target()
    database = DirectoryBasedExampleDatabase(str(args.corpus)) if args.corpus is not None else None
    print(f"hypothesis: {args.minutes:g} min against 127.0.0.1:{fuzz.target.port}", flush=True)

    @settings(max_examples=HEALTH_EVERY, deadline=None, database=database, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=4096))
    def batch(data: bytes) -> None:
        fuzz.check(data)

    until_s = time.monotonic() + args.minutes * 60
    rounds = 0
    try:
        while time.monotonic() < until_s:
            batch()
            rounds += 1
            if not fuzz.healthy():
                print("FAILED: the miner no longer answers a plain validator request")
                return 1
    except AssertionError as exc:
        print(f"FAILED after {fuzz.sent} requests: {exc}")
        return 1
    finally:
        fuzz.close()
    print(f"ok: {fuzz.sent} requests, {rounds} rounds of {HEALTH_EVERY}, no failure")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from loguru import logger

    logger.remove()  # the miner's own lines at WARNING and above: a failure inside it shows, routine lines do not
    logger.add(sys.stderr, level="WARNING")
    if args.reproduce:
        return reproduce(args.reproduce)
    use_atheris = args.engine == "atheris" or (args.engine == "auto" and importlib.util.find_spec("atheris"))
    return run_atheris(args) if use_atheris else run_hypothesis(args)


if __name__ == "__main__":
    sys.exit(main())
