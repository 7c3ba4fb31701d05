"""Content hashes of files and directories: the identity of a model version."""
from __future__ import annotations

import hashlib
from pathlib import Path


def dir_hash(path: str | Path) -> str:
    """sha256 over the relative names and bytes of every file under `path` (first 12 hex chars)."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]
