"""A fuzzer over the request path: HTTP parsing, the HTTP guard, the axon's header and body parsing, verification,
the nonce rule, base64 and image decoding (the second red-team pass, docs/security.md).

Each input is a byte string read as a sequence of choices (`cases.py`): a validator's request, signed by a
registered key, with parts made odd or replaced (method, path, headers, nonce, timeout, body, JSON fields, the
image, its base64). It is sent over loopback to a miner served in process (`target.py`: the real axon, guards and
engine, with an expert that answers without a model, so every image is decoded). The property: every request gets
an answer below 500 (200 with a prediction in [0, 1] and no image sent back), nothing inside fails (no
`error_500`), and the miner still answers a validator afterwards.

`python -m sn72_lab.fuzz --minutes 5` runs it: coverage-guided with atheris where it is installed, hypothesis
otherwise; `tests/security/test_request_fuzz.py` runs a few hundred hypothesis examples in the suite.
This package is a tool: the miner never imports it.
"""
