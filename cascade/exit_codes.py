"""Exit codes the cascade ends the miner's process with (pm2.config.js restarts on them; docs/operations.md).

A module of its own so that the miner's start-up (neurons/startup.py, `--check`) and the deploy files' tests can name
a code without importing the engine and everything it loads.
"""

from __future__ import annotations

# EX_SOFTWARE: a device context is lost (cascade/engine.py); pm2 (autorestart) starts a fresh process, with a fresh
# CUDA context.
EXIT_DEVICE = 70
