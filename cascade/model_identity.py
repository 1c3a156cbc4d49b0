"""What a model *is*, by content: the identity a calibration is fitted for.

A calibration (temperatures, weights, thresholds) is only right for the weights it was fitted on. Naming a
model by its path is not enough: every training run writes `OUT/model`, and a folder retrained in place keeps
its name. So a calibration names each expert's model by a content digest:

- a local folder or file: sha256 over every file that decides the model's answers (relative name and content),
  leaving out the records that describe it (model card, training record, data lineage);
- a hub id: the snapshot revision the local hub cache resolves it to (the commit the miner will load), or the
  bare id when nothing is cached (an ultralytics asset name, a model not downloaded yet), said so in the value.

Only the standard library at import; huggingface_hub is imported when a hub id is resolved.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

# Files that describe a model without changing its answers: a retrained card must not unbind a calibration.
DESCRIPTIVE_FILES = frozenset({"README.md", "sn72_train.json", "sn72_data.json"})
_CHUNK = 1 << 20


# (path, inode, size, mtime_ns, ctime_ns) -> sha256 hex. The miner digests its models at start-up and on every
# reload (the calibration's binding and the served version, cascade/served_version.py): a VLM's weights take seconds.
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
# NOTE: git's "racy clean" rule: a file written within this many seconds may still be written at the same size and
# timestamp (timestamps are as coarse as the kernel's tick), so it is read again rather than trusted to its stat.
_SETTLED_S = 2.0


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if time.time() - max(stat.st_mtime, stat.st_ctime) > _SETTLED_S:
        _DIGESTS[key] = digest.hexdigest()
    return digest.hexdigest()


def _is_local(model: str) -> bool:
    return Path(model).expanduser().exists()


def local_digest(path: Path) -> str:
    """sha256 over (relative name, file sha256) of every answer-deciding file under `path` (or of the file)."""
    path = path.expanduser()
    if path.is_file():
        return _file_digest(path)
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name not in DESCRIPTIVE_FILES
                   and not any(part.startswith(".") for part in f.relative_to(path).parts))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_digest(file)}\n".encode())
    return digest.hexdigest()


def hub_revision(model_id: str) -> str | None:
    """The snapshot revision the local hub cache resolves `model_id` to, or None when it is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # noqa: BLE001 - not a valid hub id (an ultralytics asset name): no revision to read
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None  # snapshots/<revision>/config.json


def content_identity(model: str) -> str:
    """The identity a calibration records for an expert's `model` (a resolved path or a hub id).

    `sha256:<64 hex>` for local weights; `hub:<id>@<revision>` for a cached hub id; `name:<id>` otherwise.
    """
    if _is_local(model):
        return f"sha256:{local_digest(Path(model))}"
    revision = hub_revision(model)
    return f"hub:{model}@{revision}" if revision else f"name:{model}"


def short(identity: str) -> str:
    """A readable form for messages: the kind and the first 12 characters of the digest or revision."""
    kind, _, value = identity.partition(":")
    if kind == "sha256":
        return f"sha256:{value[:12]}"
    if kind == "hub" and "@" in value:
        name, _, revision = value.rpartition("@")
        return f"hub:{name}@{revision[:12]}"
    return identity
