"""Signed requests to a miner on loopback through a real bittensor dendrite, and the throwaway wallets that sign them.

`ask` is what a validator does: every payload at once from one signer, each answer as an `sn72_tools.client.Outcome`
(never raises for a miner-side failure). `validator_wallets` registers N callers as validators in an offline
metagraph beside the miner. Never use these wallets for anything that holds funds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from neurons.protocol import ImageSynapse
from sn72_lab.offline import ensure_wallet, write_offline_metagraph
from sn72_tools.client import Outcome, axon_info, make_dendrite, query


class Served(Protocol):
    """A miner on loopback: `sn72_lab.offline.MinerProcess`, or any object with its port and hotkey."""

    port: int
    hotkey: str


@asynccontextmanager
async def dendrite_of(signer: Any) -> AsyncIterator[Any]:
    """A dendrite signing as `signer` (a wallet or a keypair), its HTTP session closed on the way out."""
    dendrite = make_dendrite(signer)
    try:
        yield dendrite
    finally:
        await dendrite.aclose_session()


async def signed_query(signer: Any, port: int, hotkey: str, payload: str, timeout_s: float = 9.0,
                       host: str = "127.0.0.1", **options: Any) -> Outcome:
    """One signed request (options: synapse_cls, testnet_label) from a dendrite of its own."""
    async with dendrite_of(signer) as dendrite:
        return await query(dendrite, axon_info(host, port, hotkey), payload, timeout_s, **options)


def ask(miner: Served, signer: Any, payloads: Sequence[str], timeout_s: float = 9.0,
        synapse_cls: type[ImageSynapse] | None = None) -> list[Outcome]:
    """Every payload at once from one dendrite signing as `signer`; their outcomes in order."""
    options = {"synapse_cls": synapse_cls} if synapse_cls else {}

    async def all_at_once() -> list[Outcome]:
        async with dendrite_of(signer) as dendrite:
            axon = axon_info("127.0.0.1", miner.port, miner.hotkey)
            return list(await asyncio.gather(*(query(dendrite, axon, p, timeout_s=timeout_s, **options)
                                               for p in payloads)))

    return asyncio.run(all_at_once())


def validator_wallets(folder: Path, callers: int | Iterable[str],
                      stake: float = 1000.0) -> tuple[Path, Any, list[Any]]:
    """(wallet path, the miner's wallet, one validator wallet per caller) under folder/wallets, and
    folder/metagraph.json with the miner at uid 0 and each caller a validator with `stake`. `callers`: their
    names, or how many (named validator0, validator1, ...)."""
    names = [f"validator{i}" for i in range(callers)] if isinstance(callers, int) else list(callers)
    wallets = folder / "wallets"
    miner = ensure_wallet(wallets, "miner")
    wallets_of_callers = [ensure_wallet(wallets, name) for name in names]
    write_offline_metagraph(folder / "metagraph.json", 72, miner.hotkey.ss58_address,
                            {w.hotkey.ss58_address: stake for w in wallets_of_callers})
    return wallets, miner, wallets_of_callers
