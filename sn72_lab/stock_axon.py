"""The reference for axon throughput: bittensor's stock axon with a trivial forward (benchmarks only).

    python -m sn72_lab.stock_axon --wallet.path P --wallet.name miner --port N [--hotkey-once]

It answers every `ImageSynapse` with 0.5 and nothing else: no guards, no decoding, no model. The
miner's own path through the axon is measured against it (`sn72-bench axon --stock`).

As shipped, bittensor-wallet reads and parses the hotkey file on every `wallet.hotkey`, which the axon does twice
per request; the miner reads it once. `--hotkey-once` gives the stock axon the same fix, a stricter reference.

No `from __future__ import annotations`: `Axon.attach` inspects the forward's real annotation classes.
"""

import argparse
import signal
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wallet.path", dest="wallet_path", required=True)
    parser.add_argument("--wallet.name", dest="wallet_name", default="miner")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hotkey-once", action="store_true",
                        help="unlock the hotkey once at start-up (as the miner does) instead of per access")
    args = parser.parse_args(argv)

    import bittensor as bt

    from neurons.miner import READY_LINE
    from neurons.protocol import ImageSynapse

    wallet = bt.Wallet(name=args.wallet_name, hotkey="default", path=args.wallet_path)
    if args.hotkey_once:
        wallet.unlock_hotkey()
    axon = bt.Axon(wallet=wallet, port=args.port, ip="127.0.0.1", external_ip="127.0.0.1")
    axon.fast_config.host = "127.0.0.1"

    def forward(synapse: ImageSynapse) -> ImageSynapse:
        synapse.prediction = 0.5
        synapse.image = ""
        return synapse

    axon.attach(forward_fn=forward)
    axon.start()
    # `start` returns before uvicorn has bound the port (its server runs in a thread): say ready only once it has.
    deadline = time.monotonic() + 30.0
    while not axon.fast_server.started:
        if time.monotonic() > deadline:
            print("error: the stock axon's server did not start within 30 s", file=sys.stderr)
            return 1
        time.sleep(0.005)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"{READY_LINE} 127.0.0.1:{args.port} hotkey={wallet.hotkey.ss58_address}", flush=True)
    while not stop.wait(0.5):
        pass
    axon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
