"""The README's operator path matches the subnet as it is, and its sn72-al commands name a store
that exists (item 4): the README is what a new operator follows, word for word."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(text: str, title: str) -> str:
    start = text.index(title)
    following = re.search(r"^#{2,3} ", text[start + len(title):], flags=re.MULTILINE)
    return text[start: start + len(title) + (following.start() if following else len(text))]


def test_the_operator_path_marks_what_validators_no_longer_read_as_optional():
    path = section(README, "## From a bare GPU machine to a serving miner")
    steps = {int(m.group(1)): m.group(0) for m in re.finditer(r"^# (\d+)\. .*$", path, flags=re.MULTILINE)}
    optional = [number for number, line in steps.items() if "(optional" in line]
    assert sorted(optional) == [6, 7], steps  # the model repository and NATIX registration, nothing else
    assert "sn72-submit" in path.split("# 6.")[1].split("# 7.")[0]
    assert "sn72-register" in path.split("# 7.")[1].split("# 8.")[0]
    for required in ("registered on the subnet", "serves", "models"):
        assert required in path


def test_the_readme_says_where_the_subnet_stands_and_from_which_source():
    stands = section(README, "### Where the subnet stands")
    for fact in ("halted", "burned", "streetvision-subnet", "5d0756b", "2026-05-07", "model_card.json",
                 "register.sh", "optional"):
        assert fact in stands, fact
    assert "../shared" not in README and "/work/" not in README  # self-contained: no files outside the repository


def test_every_sn72_al_command_in_the_docs_names_a_store_the_miner_writes():
    for doc in (ROOT / "README.md", ROOT / "docs" / "active_learning.md", ROOT / "docs" / "training.md",
                ROOT / "docs" / "learning.md"):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.DOTALL):
            exported = False
            for line in block.splitlines():
                exported = exported or line.startswith("export MINER_CONFIG=")
                if not re.search(r"(sn72-al|\$al) (stats|list|show|label|export|prune)\b", line):
                    continue
                names_store = "--config " in line or exported or re.search(r"--store (?!al-store\b)\S", line)
                assert names_store, f"{doc.name}: `{line.strip()}` looks in ./al-store, which no shipped config writes"
