"""Shared helpers for the fscrypt crypto tests: where the kernel-made vectors live."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import zstandard

from cipherdump.fscrypt.context import EncryptionContext, decode_context

SHARED_TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
KERNEL_VECTORS = SHARED_TESTDATA / "kernel-vectors"
KERNEL_VECTORS_61 = SHARED_TESTDATA / "kernel-vectors-6.1"
LOCAL_VECTORS = Path(__file__).resolve().parent / "vectors"


@cache
def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def scenario_files() -> list[Path]:
    """Every kernel-vector scenario whose policy the kernel accepted."""
    if not KERNEL_VECTORS.is_dir():
        return []
    out = []
    for path in sorted(KERNEL_VECTORS.glob("*__*.json")):
        if path.name.endswith("__image.json"):
            continue
        if load_json(path).get("set_policy", {}).get("ok"):
            out.append(path)
    return out


def image_of(scenario: Path) -> dict[str, Any]:
    tag = scenario.name.split("__", 1)[0]
    image: dict[str, Any] = load_json(KERNEL_VECTORS / f"{tag}__image.json")
    return image


def nokey_ciphertext(nokey_name: str) -> tuple[int, int, bytes]:
    """(hash, minor, embedded ciphertext or long-form prefix) of a no-key name."""
    raw = base64.urlsafe_b64decode(nokey_name + "=" * (-len(nokey_name) % 4))
    return (
        int.from_bytes(raw[0:4], "little"),
        int.from_bytes(raw[4:8], "little"),
        raw[8:],
    )


def debugfs_available() -> bool:
    return shutil.which("debugfs") is not None


class DebugfsImage:
    """Read a test image through e2fsprogs' debugfs.

    A stopgap until cipherdump's own ext4 reader exists (TODO(lead): replace): it pulls
    an inode's context, data blocks or raw directory bytes so the crypto layer can be
    checked against kernel-written ciphertext.
    """

    def __init__(self, path: Path, block_size: int) -> None:
        self.path = path
        self.block_size = block_size

    @classmethod
    def unpack(cls, compressed: Path, into: Path, block_size: int) -> DebugfsImage:
        raw = into / (compressed.name.split(".")[0] + ".img")
        with compressed.open("rb") as src, raw.open("wb") as dst:
            if compressed.suffix == ".gz":
                with gzip.open(src) as unzipped:
                    shutil.copyfileobj(unzipped, dst)
            else:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
        return cls(raw, block_size)

    def _debugfs(self, request: str) -> str:
        done = subprocess.run(
            ["debugfs", "-R", request, str(self.path)],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def context(self, ino: int) -> EncryptionContext:
        out = self._debugfs(f"ea_get <{ino}> c")
        match = re.search(r"c \(\d+\) = ((?:[0-9a-f]{2} ?)+)", out)
        assert match, out
        return decode_context(bytes.fromhex(match.group(1).replace(" ", "")))

    def file_blocks(self, ino: int) -> bytes:
        """All data blocks of ``ino`` in logical order (holes are not expected)."""
        blocks = [int(b) for b in self._debugfs(f"blocks <{ino}>").split()]
        out = []
        with self.path.open("rb") as f:
            for b in blocks:
                f.seek(b * self.block_size)
                out.append(f.read(self.block_size))
        return b"".join(out)

    def dirents(self, ino: int) -> list[tuple[int, bytes]]:
        """(inode, raw name) of each live entry in directory ``ino``'s blocks."""
        data = self.file_blocks(ino)
        out = []
        for start in range(0, len(data), self.block_size):
            pos = start
            end = start + self.block_size
            while pos + 8 <= end:
                child = int.from_bytes(data[pos : pos + 4], "little")
                rec_len = int.from_bytes(data[pos + 4 : pos + 6], "little")
                name_len = data[pos + 6]
                if rec_len < 8:
                    break
                name = data[pos + 8 : pos + 8 + name_len]
                if child and name not in (b".", b".."):
                    out.append((child, bytes(name)))
                pos += rec_len
        return out
