"""Register this miner with the NATIX application server (after the chain registration).

    sn72-register --config config/miner.production.yaml              # wallet, chain, model repo from the config
    sn72-register --config ... --uid 17 --dry-run                    # print the signed request, send nothing
    sn72-register --config config/miner.demo.yaml --dry-run          # chain.offline: the uid from the metagraph file
    python -m sn72_tools.natix --wallet.name miner --network test --netuid 323 --model-repo me/sn72-miner

What it does, as NATIX's own register.sh (streetvision-subnet at 28a1755, docs/onboarding.md): sign a fresh
unix timestamp with the wallet's hotkey, POST {uid, message, natix_public_key, natix_signature, type: miner,
model_repo} to <base>/participants/register, then poll <base>/participants/registration-status/<uid>
until the status is final or the timeout passes. The uid is --uid, else looked up where the miner looks:
chain.metagraph_file when the config says chain.offline (no chain is dialled), the chain otherwise.

NATIX registration is optional: since 2026 no validator reads it (README, "Where the subnet stands").

Exit codes: 0 succeeded; 1 the server refused the registration (its reason is printed); 2 usage or
configuration error; 3 still pending at the timeout; 4 HTTP or protocol error (error status, non-JSON);
5 no network (server or chain unreachable, or silent); 6 the hotkey is not registered on the subnet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from neurons.tool_config import ToolError, add_config_argument, load_miner_config

DEFAULT_BASE_URL = "https://hydra.natix.network"
REGISTER_PATH = "/participants/register"  # NATIX's docs still show the older singular /participant/register
STATUS_PATH = "/participants/registration-status/{uid}"
SUCCEEDED = frozenset({"succeeded", "success"})
FAILED = frozenset({"failed", "error"})
PENDING = frozenset({"pending", "queued", "processing", ""})


class Exit(IntEnum):
    SUCCEEDED = 0
    FAILED = 1
    USAGE = 2
    PENDING = 3
    PROTOCOL = 4
    NO_NETWORK = 5
    NOT_REGISTERED = 6


class RegistrationError(Exception):
    """Ends the command with `code` and a one-line message."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


def repo_id_from_url(model_url: str) -> str:
    """`owner/name` from a repository id or its URL (https://huggingface.co/owner/name)."""
    text = model_url.strip()
    path = urlparse(text).path if "://" in text else text
    parts = [part for part in path.strip("/").split("/") if part]
    if len(parts) != 2:
        raise ValueError(f"expected a Hugging Face repository 'owner/name' or its URL, got {model_url!r}")
    return "/".join(parts)


def build_request(hotkey: Any, uid: int, model_repo: str, now: Callable[[], float] = time.time) -> dict[str, str]:
    """The registration body: a fresh unix timestamp signed by the hotkey, as `btcli wallet sign --use-hotkey`."""
    message = str(int(now()))
    signature = hotkey.sign(message.encode("utf-8")).hex()
    return {
        "uid": str(uid),
        "message": message,
        "natix_public_key": hotkey.ss58_address,
        "natix_signature": signature,
        "type": "miner",
        "model_repo": model_repo,
    }


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: Any  # parsed JSON; None when the answer was not JSON
    text: str


def _excerpt(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _http(method: str, url: str, timeout_s: float, payload: dict[str, str] | None = None) -> Answer:
    try:
        response = requests.request(method, url, json=payload, timeout=timeout_s)
    except requests.Timeout as exc:
        raise RegistrationError(Exit.NO_NETWORK, f"no answer from {url} within {timeout_s:g} s") from exc
    except requests.ConnectionError as exc:
        raise RegistrationError(Exit.NO_NETWORK, f"cannot reach {url}: {_excerpt(str(exc), 160)}") from exc
    except requests.RequestException as exc:
        raise RegistrationError(Exit.PROTOCOL, f"{method} {url} failed: {_excerpt(str(exc), 160)}") from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    return Answer(response.status_code, body, response.text)


def _detail(answer: Answer) -> str:
    if isinstance(answer.body, dict):
        for key in ("detail", "error_message", "message"):
            if answer.body.get(key):
                return _excerpt(str(answer.body[key]))
    return _excerpt(answer.text) if answer.text.strip() else "(empty body)"


def submit(base_url: str, payload: dict[str, str], timeout_s: float, say: Callable[[str], None]) -> None:
    """POST the registration; the server's `detail` is printed. Raises for answers that end the command."""
    url = base_url.rstrip("/") + REGISTER_PATH
    answer = _http("POST", url, timeout_s, payload)
    if answer.body is None:
        raise RegistrationError(Exit.PROTOCOL, f"the server's answer was not JSON (HTTP {answer.status_code}): "
                                               f"{_detail(answer)}")
    if answer.status_code >= 500:
        raise RegistrationError(Exit.PROTOCOL, f"server error HTTP {answer.status_code}: {_detail(answer)}")
    # NOTE: a 4xx with a detail (e.g. already registered) is reported and the status is polled anyway, as
    # register.sh does: the status endpoint is the server's word on the outcome.
    prefix = "server" if answer.status_code < 400 else f"server (HTTP {answer.status_code})"
    say(f"{prefix}: {_detail(answer)}")


def poll(base_url: str, uid: int, interval_s: float, timeout_s: float, http_timeout_s: float,
         say: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> Exit:
    """Poll the status until succeeded/failed or `timeout_s`; transient errors are retried until then."""
    url = base_url.rstrip("/") + STATUS_PATH.format(uid=uid)
    until = time.monotonic() + timeout_s
    last_problem: RegistrationError | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            answer = _http("GET", url, http_timeout_s)
            if answer.status_code >= 400 or not isinstance(answer.body, dict):
                kind = f"HTTP {answer.status_code}" if answer.status_code >= 400 else "a non-JSON answer"
                raise RegistrationError(Exit.PROTOCOL, f"status check got {kind}: {_detail(answer)}")
        except RegistrationError as problem:
            last_problem = problem
            say(f"attempt {attempt}: {problem} (retrying)")
        else:
            last_problem = None
            status = str(answer.body.get("status") or "").lower()
            if status in SUCCEEDED:
                say(f"registration succeeded for uid {uid}: {json.dumps(answer.body)}")
                return Exit.SUCCEEDED
            if status in FAILED:
                reason = answer.body.get("error_message") or "no reason given"
                raise RegistrationError(Exit.FAILED, f"registration failed for uid {uid}: {reason}")
            label = status or "no status yet"
            known = status in PENDING
            say(f"attempt {attempt}: {label}" + ("" if known else f" (unknown status; payload {_detail(answer)})"))
        if time.monotonic() + interval_s > until:
            break
        sleep(interval_s)
    if last_problem is not None:
        raise RegistrationError(last_problem.code, f"no status within {timeout_s:g} s; last answer: {last_problem}")
    raise RegistrationError(
        Exit.PENDING,
        f"still pending after {timeout_s:g} s; check later: curl -s {url} (or run this command again)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sn72-register", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_argument(parser, "wallet, chain (network, netuid, offline metagraph file) and natix.model_url/base_url")
    parser.add_argument("--wallet.name", dest="wallet_name", help="wallet name (default: the config's, or 'default')")
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey", help="hotkey name")
    parser.add_argument("--wallet.path", dest="wallet_path", help="wallets folder")
    parser.add_argument("--network", help="finney, test, local or ws://...: where the uid is looked up")
    parser.add_argument("--netuid", type=int, help="72 on finney, 323 on testnet")
    parser.add_argument("--uid", type=int, help="this miner's uid (skips the chain lookup)")
    parser.add_argument("--model-repo", help="Hugging Face repository owner/name or its URL (default: natix.model_url)")
    parser.add_argument("--base-url", help=f"NATIX application server (default: {DEFAULT_BASE_URL})")
    parser.add_argument("--poll-interval-s", type=float, default=3.0, help="seconds between status checks (3)")
    parser.add_argument("--timeout-s", type=float, default=180.0, help="give up polling after this (180)")
    parser.add_argument("--http-timeout-s", type=float, default=30.0, help="one HTTP request's limit (30)")
    parser.add_argument("--chain-timeout-s", type=float, help="each chain call's limit (default: chain.timeout_s, 60)")
    parser.add_argument("--dry-run", action="store_true", help="print the signed request and exit; nothing is sent")
    return parser


@dataclass
class Settings:
    wallet_name: str
    wallet_hotkey: str
    wallet_path: str
    network: str
    netuid: int
    model_repo: str
    base_url: str
    chain_timeout_s: float
    metagraph_file: Path | None  # set when the uid comes from the offline metagraph file, not the chain


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Flags over the miner config over defaults."""
    from neurons.config import ChainConfig, NatixConfig, WalletConfig

    wallet, chain, natix = WalletConfig(), ChainConfig(), NatixConfig()
    if args.config is not None:
        try:
            miner = load_miner_config(args.config)
        except ToolError as exc:
            raise RegistrationError(Exit.USAGE, str(exc)) from exc
        wallet, chain, natix = miner.wallet, miner.chain, miner.natix
    repo = args.model_repo if args.model_repo is not None else natix.model_url
    if not repo:
        raise RegistrationError(Exit.USAGE, "no model repository: pass --model-repo owner/name or set natix.model_url")
    try:
        repo = repo_id_from_url(repo)
    except ValueError as exc:
        raise RegistrationError(Exit.USAGE, str(exc)) from exc
    for name in ("poll_interval_s", "timeout_s", "http_timeout_s"):
        if getattr(args, name) <= 0:
            raise RegistrationError(Exit.USAGE, f"--{name.replace('_', '-')} must be positive")
    return Settings(
        wallet_name=args.wallet_name or wallet.name,
        wallet_hotkey=args.wallet_hotkey or wallet.hotkey,
        wallet_path=str(Path(args.wallet_path or wallet.path).expanduser()),
        network=args.network or chain.network,
        netuid=args.netuid if args.netuid is not None else chain.netuid,
        model_repo=repo,
        base_url=(args.base_url or natix.base_url).rstrip("/"),
        chain_timeout_s=args.chain_timeout_s or chain.timeout_s,
        # an explicit --network asks for the chain, whatever the config
        metagraph_file=chain.metagraph_file if chain.offline and args.network is None else None,
    )


def open_hotkey(settings: Settings) -> Any:
    import bittensor as bt

    wallet = bt.Wallet(name=settings.wallet_name, hotkey=settings.wallet_hotkey, path=settings.wallet_path)
    try:
        hotkey = wallet.hotkey
        hotkey.ss58_address  # noqa: B018 - raises here when the key file cannot be read
    except Exception as exc:  # bittensor-wallet raises several types for a missing key
        raise RegistrationError(Exit.USAGE, f"cannot open hotkey {settings.wallet_name}/{settings.wallet_hotkey} "
                                            f"in {settings.wallet_path}: {_excerpt(str(exc), 160)}") from exc
    return hotkey


def chain_uid(settings: Settings, hotkey_ss58: str) -> int:
    from neurons.chain import ChainError, connect_subtensor, lookup_uid

    try:
        subtensor = connect_subtensor(settings.network, settings.chain_timeout_s)
        uid = lookup_uid(subtensor, hotkey_ss58, settings.netuid, settings.chain_timeout_s)
    except ChainError as exc:
        raise RegistrationError(Exit.NO_NETWORK, f"{exc}; pass --uid to skip the lookup") from exc
    if uid is None:
        raise RegistrationError(Exit.NOT_REGISTERED, f"hotkey {hotkey_ss58} is not registered on netuid "
                                                     f"{settings.netuid} ({settings.network}): run btcli subnets "
                                                     "register first")
    return uid


def file_uid(path: Path, hotkey_ss58: str) -> int:
    """The hotkey's uid in the offline metagraph file the miner reads (chain.offline)."""
    from neurons.chain import parse_metagraph_json

    try:
        snapshot = parse_metagraph_json(json.loads(path.read_text()), str(path))
    except (OSError, ValueError) as exc:
        raise RegistrationError(Exit.USAGE, f"chain.metagraph_file: cannot read {path}: {_excerpt(str(exc), 160)}"
                                ) from exc
    neuron = snapshot.get(hotkey_ss58)
    if neuron is None:
        raise RegistrationError(Exit.NOT_REGISTERED, f"hotkey {hotkey_ss58} is not in the offline metagraph {path} "
                                                     "(chain.offline): add it there, or pass --uid")
    return neuron.uid


def run(args: argparse.Namespace, say: Callable[[str], None]) -> Exit:
    settings = resolve_settings(args)
    hotkey = open_hotkey(settings)
    if args.uid is not None:
        uid = args.uid
    elif settings.metagraph_file is not None:
        uid = file_uid(settings.metagraph_file, hotkey.ss58_address)
    else:
        uid = chain_uid(settings, hotkey.ss58_address)
    payload = build_request(hotkey, uid, settings.model_repo)
    url = settings.base_url + REGISTER_PATH
    if args.dry_run:
        say(f"POST {url}\nContent-Type: application/json\n\n{json.dumps(payload, indent=2)}")
        say(f"then: GET {settings.base_url}{STATUS_PATH.format(uid=uid)} every {args.poll_interval_s:g} s")
        return Exit.SUCCEEDED
    say(f"registering uid {uid} (hotkey {hotkey.ss58_address}, model {settings.model_repo}) at {url}")
    submit(settings.base_url, payload, args.http_timeout_s, say)
    say(f"polling the status every {args.poll_interval_s:g} s for up to {args.timeout_s:g} s")
    return poll(settings.base_url, uid, args.poll_interval_s, args.timeout_s, args.http_timeout_s, say)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        return int(run(args, say))
    except RegistrationError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return int(exc.code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into `head` or similar: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
