"""The operators' docs show `sn72-miner reload` exactly as it works: every command line parses as the command
parses it, and docs/reload.md's table has every exit code the command can return."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from neurons.config import build_parser as miner_parser
from neurons.reload_command import EXIT_CODES
from neurons.reload_command import build_parser as reload_parser

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDERS = {"S": "600"}  # what a placeholder stands for, where the parser checks the type
DOCS = [ROOT / "README.md", *(ROOT / "docs" / name for name in ("reload.md", "training.md", "learning.md"))]


def reload_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments after `reload`) of every `sn72-miner reload` command in the docs: in ```bash blocks (where a
    command without --config must follow `export MINER_CONFIG=`, as it reads that) and in `inline code` with
    options."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
            exported = False
            for line in block.splitlines():
                exported = exported or line.startswith("export MINER_CONFIG=")
                match = re.search(r"sn72-miner reload([^#]*)", line)
                if match:
                    args = shlex.split(match.group(1))
                    assert "--config" in args or exported, f"{doc.name}: `{line.strip()}` names no miner config"
                    found.append((f"{doc.name}: {line.strip()}", args if "--config" in args else ["--config", "M"]))
        for match in re.finditer(r"`sn72-miner reload (--[^`]*)`", text):
            options = shlex.split(match.group(1).replace("[", "").replace("]", ""))  # `[--timeout S]`: optional
            found.append((f"{doc.name}: {match.group(0)}", [PLACEHOLDERS.get(arg, arg) for arg in options]))
    return found


def test_every_documented_reload_command_parses_as_the_command_parses_it():
    commands = reload_commands()
    assert len(commands) >= 5, commands
    for _, args in commands:
        _, rest = reload_parser().parse_known_args(args)
        miner_parser().parse_args(rest)  # exits (a failure here) on an option the miner does not know


def test_the_exit_code_table_has_every_code_the_command_returns():
    text = (ROOT / "docs" / "reload.md").read_text()
    table = [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert sorted(int(line.split("|")[1]) for line in table) == sorted(EXIT_CODES)
