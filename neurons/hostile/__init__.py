"""Hostile traffic for testing the miner (issue 9): a forging client, an attack catalogue, a red-team runner.

Offline tooling: the miner's request path never imports this package.

    wire.py       the validators' wire spoken by hand: build, sign, tamper, send, read raw responses
    payloads.py   hostile and unusual images (bombs, odd modes, animations, EXIF, fake HEIC)
    model.py      Attack, Context, Observation, Reply
    catalogue.py  the named attacks with their expected statuses
    heavy.py      floods, idle/slow connections, huge bodies (raw sockets)
    load.py       an honest validator sending signed requests beside an attack
    target.py     an offline miner to attack (wallets, metagraph, tiny cascade, limits)
    setup.py      `sn72-redteam --setup-offline`
    redteam.py    the `sn72-redteam` command
"""
