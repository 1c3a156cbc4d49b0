"""sn72-register against a local NATIX-like server that checks the hotkey's signature, answer by answer."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sn72_lab.offline import ensure_wallet, free_port
from sn72_tools.natix import Exit, build_request, main, repo_id_from_url
from tests.factories.local_http import local_http_server

MODEL_REPO = "someone/sn72-cascade"


def signature_is_valid(payload: dict[str, Any]) -> bool:
    """What the server must check: the timestamp, signed by the hotkey whose ss58 address is sent."""
    from bittensor_wallet import Keypair

    try:
        signature = bytes.fromhex(payload["natix_signature"])
        return bool(Keypair(ss58_address=payload["natix_public_key"]).verify(payload["message"], signature))
    except (KeyError, ValueError, TypeError):
        return False


@dataclass
class NatixServer:
    """POST /participants/register and GET /participants/registration-status/<uid>, scripted per test."""

    expected_hotkey: str
    register_answer: tuple[int, str] = (200, json.dumps({"detail": "Registration queued"}))
    statuses: list[tuple[int, str]] = field(default_factory=list)  # one per poll; the last one repeats
    registrations: list[dict[str, Any]] = field(default_factory=list)
    polls: list[str] = field(default_factory=list)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        if method == "POST" and path == "/participants/register":
            payload = json.loads(body)
            fresh = abs(int(payload["message"]) - time.time()) < 60
            fields_ok = (payload["type"] == "miner" and isinstance(payload["uid"], str)
                         and payload["natix_public_key"] == self.expected_hotkey)
            if not (fresh and fields_ok and signature_is_valid(payload)):
                return 401, json.dumps({"detail": "signature does not verify"})
            self.registrations.append(payload)
            return self.register_answer
        if method == "GET" and path.startswith("/participants/registration-status/"):
            self.polls.append(path.rsplit("/", 1)[1])
            index = min(len(self.polls), len(self.statuses)) - 1
            return self.statuses[index]
        return 404, json.dumps({"detail": "Not Found"})


@pytest.fixture
def serve() -> Iterator[Any]:
    with ExitStack() as servers:

        def start(natix: NatixServer) -> str:
            def handle(method: str, path: str, headers: Any, body: bytes) -> tuple[int, str, bytes]:
                status, text = natix.handle(method, path, body)
                return status, "application/json" if text.startswith("{") else "text/html", text.encode()

            return servers.enter_context(local_http_server(handle))

        yield start


@pytest.fixture(scope="module")
def wallet(tmp_path_factory):
    path = tmp_path_factory.mktemp("wallets")
    return path, ensure_wallet(path, "miner")


def register(wallet, base_url: str, *extra: str) -> list[str]:
    path, miner = wallet
    return ["--wallet.name", miner.name, "--wallet.path", str(path), "--uid", "17", "--model-repo", MODEL_REPO,
            "--base-url", base_url, "--poll-interval-s", "0.02", "--timeout-s", "5", "--http-timeout-s", "5", *extra]


def ok(status: str, **extra: Any) -> tuple[int, str]:
    return 200, json.dumps({"status": status, **extra})


def test_a_verified_registration_goes_from_pending_to_succeeded(wallet, serve, capsys):
    natix = NatixServer(wallet[1].hotkey.ss58_address, statuses=[ok("queued"), ok("pending"), ok("succeeded")])
    assert main(register(wallet, serve(natix))) == Exit.SUCCEEDED
    out = capsys.readouterr().out
    assert len(natix.registrations) == 1 and natix.polls == ["17", "17", "17"]
    sent = natix.registrations[0]
    assert sent["uid"] == "17" and sent["model_repo"] == MODEL_REPO and sent["type"] == "miner"
    assert "server: Registration queued" in out and "attempt 2: pending" in out and "succeeded for uid 17" in out


def test_a_refused_registration_prints_the_servers_reason(wallet, serve, capsys):
    natix = NatixServer(wallet[1].hotkey.ss58_address,
                        statuses=[ok("processing"), ok("failed", error_message="model_card.json not found")])
    assert main(register(wallet, serve(natix))) == Exit.FAILED
    err = capsys.readouterr().err
    assert err.strip() == "error: registration failed for uid 17: model_card.json not found"


def test_a_server_error_on_register_is_an_http_error(wallet, serve, capsys):
    natix = NatixServer(wallet[1].hotkey.ss58_address, register_answer=(500, json.dumps({"detail": "db down"})))
    assert main(register(wallet, serve(natix))) == Exit.PROTOCOL
    assert capsys.readouterr().err.strip() == "error: server error HTTP 500: db down"
    assert natix.polls == []


def test_a_non_json_answer_is_a_protocol_error(wallet, serve, capsys):
    natix = NatixServer(wallet[1].hotkey.ss58_address, register_answer=(502, "<html><h1>Bad Gateway</h1></html>"))
    assert main(register(wallet, serve(natix))) == Exit.PROTOCOL
    err = capsys.readouterr().err
    assert "not JSON (HTTP 502)" in err and "Bad Gateway" in err


def test_status_errors_are_retried_until_an_answer(wallet, serve, capsys):
    natix = NatixServer(wallet[1].hotkey.ss58_address,
                        statuses=[(500, "Internal Server Error"), (200, "not json"), ok("success")])
    assert main(register(wallet, serve(natix))) == Exit.SUCCEEDED
    out = capsys.readouterr().out
    assert "HTTP 500" in out and "non-JSON" in out and "retrying" in out


def test_still_pending_at_the_timeout(wallet, serve, capsys):
    natix = NatixServer(wallet[1].hotkey.ss58_address, statuses=[ok("pending")])
    args = register(wallet, serve(natix))
    args[args.index("--timeout-s") + 1] = "0.3"
    assert main(args) == Exit.PENDING
    err = capsys.readouterr().err
    assert "still pending after 0.3 s" in err and "/participants/registration-status/17" in err
    assert len(natix.polls) >= 2


def test_a_closed_port_is_no_network(wallet, capsys):
    assert main(register(wallet, f"http://127.0.0.1:{free_port()}")) == Exit.NO_NETWORK
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach http://127.0.0.1:") and len(err.strip().splitlines()) == 1


def test_a_silent_server_times_out_as_no_network(wallet, capsys):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        args = register(wallet, f"http://127.0.0.1:{silent.getsockname()[1]}")
        args[args.index("--http-timeout-s") + 1] = "0.5"
        assert main(args) == Exit.NO_NETWORK
    assert "no answer from" in capsys.readouterr().err


def test_the_signature_check_is_real(wallet):
    payload = build_request(wallet[1].hotkey, 17, MODEL_REPO)
    assert signature_is_valid(payload)
    assert not signature_is_valid({**payload, "message": str(int(payload["message"]) + 1)})
    other = ensure_wallet(wallet[0], "someone-else")
    assert not signature_is_valid({**payload, "natix_public_key": other.hotkey.ss58_address})


def test_dry_run_prints_the_signed_request_and_sends_nothing(wallet, serve, capsys):
    natix = NatixServer(wallet[1].hotkey.ss58_address, statuses=[ok("succeeded")])
    assert main([*register(wallet, serve(natix)), "--dry-run"]) == Exit.SUCCEEDED
    out = capsys.readouterr().out
    assert natix.registrations == [] and natix.polls == []
    payload = json.loads(out[out.index("{"): out.rindex("}") + 1])
    assert signature_is_valid(payload) and payload["natix_public_key"] == wallet[1].hotkey.ss58_address


def test_the_miner_config_supplies_wallet_and_model_url(wallet, tmp_path, capsys):
    path, miner = wallet
    (tmp_path / "cascade.yaml").write_text(yaml.safe_dump(
        {"levels": [{"name": "l", "experts": [{"name": "e", "backend": "hf_classifier", "model": "x/y"}]}]}))
    (tmp_path / "miner.yaml").write_text(yaml.safe_dump({
        "wallet": {"name": miner.name, "path": str(path)}, "cascade_file": "cascade.yaml",
        "natix": {"model_url": f"https://huggingface.co/{MODEL_REPO}", "base_url": "http://natix.invalid"}}))
    assert main(["--config", str(tmp_path / "miner.yaml"), "--uid", "3", "--dry-run"]) == Exit.SUCCEEDED
    out = capsys.readouterr().out
    assert out.startswith("POST http://natix.invalid/participants/register")
    assert json.loads(out[out.index("{"): out.rindex("}") + 1])["model_repo"] == MODEL_REPO


def test_the_uid_lookup_offline_is_one_line_and_names_the_way_out(wallet, capsys):
    args = register(wallet, "http://natix.invalid")
    args[args.index("--uid"): args.index("--uid") + 2] = ["--network", f"ws://127.0.0.1:{free_port()}"]
    assert main([*args, "--dry-run", "--chain-timeout-s", "20"]) == Exit.NO_NETWORK
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: connecting to the ws://127.0.0.1:") and err.endswith("pass --uid to skip the lookup")


@pytest.mark.parametrize(("argv_extra", "message"), [
    (["--model-repo", "not-a-repo"], "expected a Hugging Face repository"),
    (["--poll-interval-s", "0"], "--poll-interval-s must be positive"),
    (["--wallet.name", "nobody"], "cannot open hotkey nobody/default"),
])
def test_usage_errors_exit_2_with_a_clear_line(wallet, argv_extra, message, capsys):
    assert main([*register(wallet, "http://natix.invalid"), *argv_extra]) == Exit.USAGE
    assert message in capsys.readouterr().err


def test_repository_ids_are_read_from_urls_and_ids():
    assert repo_id_from_url("https://huggingface.co/a-b/c.d") == "a-b/c.d"
    assert repo_id_from_url("a/b/") == "a/b"
    with pytest.raises(ValueError):
        repo_id_from_url("https://huggingface.co/a")


def test_help_has_no_side_effects(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    completed = subprocess.run([sys.executable, "-m", "sn72_tools.natix", "--help"], cwd=root, capture_output=True,
                               text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert completed.returncode == 0 and "Exit codes" in completed.stdout
    assert list(tmp_path.iterdir()) == []  # bittensor (which creates ~/.bittensor) was not imported
