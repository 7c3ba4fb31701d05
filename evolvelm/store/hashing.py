"""Content hashes of files and directories: the identity of a model version."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def dir_hash(path: str | Path) -> str:
    """sha256 over the relative names and bytes of every file under `path` (first 12 hex chars).
    Remembered per process while no file's size or modification time changes: a backend built
    again on the same 500 MB checkpoint (every stage of every round) does not read it again."""
    root = Path(path).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stats = tuple((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash(root, stats)


def adapter_version(base_version: str, adapter: str | Path) -> str:
    """The version of base weights with the adapter saved at `adapter` applied."""
    return f"{base_version}+{dir_hash(adapter)}"


@lru_cache(maxsize=256)
def _hash(root: Path, stats: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in stats:
        h.update(name.encode())
        h.update((root / name).read_bytes())
    return h.hexdigest()[:12]
