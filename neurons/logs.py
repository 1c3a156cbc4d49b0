"""The miner's log: loguru to stderr and, when configured, to a rotating file.

One stream: everything the miner says goes to stderr (pm2 writes it to one file, see pm2.config.js)
with one timestamp per line, made here. On a terminal it is coloured; anywhere else (pm2, a pipe,
a file) it carries no ANSI codes, and the libraries' progress bars are switched off before they
are imported (`quiet_progress_bars`). `logs.json_lines` writes one JSON object per line instead.
The file sink rotates at `logs.rotation_mb`, keeps `logs.retention` rotated files and compresses
them; it writes from a queue, so a slow disk never blocks a request.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from loguru import logger

from neurons.config import LogConfig

FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{line} - {message}"

# Set before transformers, huggingface_hub, tqdm or ultralytics are imported: each reads these once.
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "YOLO_VERBOSE": "False",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def quiet_progress_bars(stream: TextIO | None = None) -> bool:
    """No progress bars when `stream` (stderr) is not a terminal (they are carriage-return noise in a file)."""
    if (stream or sys.stderr).isatty():
        return False
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    return True


class LogSetupError(ValueError):
    """The log file cannot be opened (an operator must fix the path or its permissions)."""


_configured = False


def configured() -> bool:
    """Whether `configure` has installed the miner's sinks (before that, loguru's default stderr sink is on)."""
    return _configured


def configure(config: LogConfig, level: str, stream: TextIO | None = None) -> None:
    """Replace loguru's default sink with the configured ones; route the standard `logging` warnings into it."""
    global _configured
    stream = stream or sys.stderr  # looked up now: a test's captured stderr, pm2's pipe, a terminal
    colour = config.colour == "always" or (config.colour == "auto" and stream.isatty())
    logger.remove()
    # `file_only` records (a start-up error the miner has already printed as one plain line) skip stderr.
    logger.add(stream, level=level, format=FORMAT, colorize=colour, serialize=config.json_lines,
               backtrace=False, diagnose=False, filter=lambda record: not record["extra"].get("file_only"))
    if config.file is not None:
        try:
            config.file.parent.mkdir(parents=True, exist_ok=True)
            logger.add(config.file, level=level, format=FORMAT, colorize=False, serialize=config.json_lines,
                       rotation=int(config.rotation_mb * 1_000_000), retention=config.retention,
                       compression=None if config.compression == "none" else config.compression,
                       enqueue=True, backtrace=False, diagnose=False, encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise LogSetupError(f"logs.file: cannot write the log file {config.file}: {exc}") from exc
    route_standard_logging()
    _configured = True


def route_standard_logging() -> None:
    """The standard `logging` records (warnings and up, and what bittensor's own logger lets through) and Python's
    `warnings` into loguru.

    bittensor gives its logger a handler of its own (a queue to a coloured console writer) and lets the record go on
    to the root logger too: with ours there, each of its lines was written twice, once without our format (nor, in a
    front process, the `front N` mark). Its handler is taken off, so the root logger's carries them, once.
    """
    from logging.handlers import QueueHandler

    logging.basicConfig(handlers=[_ToLoguru()], level=logging.WARNING, force=True)
    logging.captureWarnings(True)  # a library's `warnings.warn` too: one timestamped line, not two bare ones on stderr
    import bittensor.utils.btlogging  # noqa: F401 - its logging machine adds its handler when first imported

    ours = logging.getLogger("bittensor")
    for handler in list(ours.handlers):
        if isinstance(handler, QueueHandler):
            ours.removeHandler(handler)


class _ToLoguru(logging.Handler):
    """Standard-library log records (warnings of uvicorn, urllib3, transformers...) into the one stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())
