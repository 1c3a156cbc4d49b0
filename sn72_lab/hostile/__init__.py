"""Hostile traffic for testing the miner (docs/security.md): a forging client, an attack catalogue, a red-team runner.

Offline tooling: the miner's request path never imports this package.

    wire.py       the validators' wire spoken by hand: build, sign, tamper, send, read raw responses
    payloads.py   hostile and unusual images (bombs, odd modes, animations, EXIF, fake HEIC)
    model.py      Attack, Context, Observation, Reply
    catalogue.py  the named attacks with their expected statuses (catalogue_second_pass.py: the second pass's)
    heavy.py      floods, idle/slow connections, huge bodies (raw sockets)
    fairness.py   attacks judged by the honest validator's answers: costly JPEGs, slow bodies, upgrades, 16-bit PNGs
    replays.py    nonce games: old version header, captured replays, reordered nonces
    odd_requests.py  odd request lines, framing tricks, JSON and base64 tricks, lying image headers, floods by key
    accounting.py is every response counted once (the miner's Prometheus endpoint)
    load.py       an honest validator sending signed requests beside an attack (model answers vs the prior)
    measure.py    the line each attack must pass; RSS and fd peaks of the miner (psutil)
    report.py     rows, terminal table, Markdown
    target.py     an offline miner to attack (wallets, metagraph, tiny cascade, limits)
    setup.py      `sn72-redteam --setup-offline`
    own_miner.py  `sn72-redteam --out DIR`: start an offline miner from a checkout, attack it, stop it
    redteam.py    the `sn72-redteam` command
"""
