"""Shared helpers for the fscrypt crypto tests: where the kernel-made vectors live."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import zstandard

from cipherdump.blockio import FileSource
from cipherdump.ext4 import Filesystem
from cipherdump.fscrypt.context import EncryptionContext, decode_context
from shared_data import LOCAL_DATA, SHARED_TESTDATA

KERNEL_VECTORS = SHARED_TESTDATA / "kernel-vectors"
KERNEL_VECTORS_61 = SHARED_TESTDATA / "kernel-vectors-6.1"
LOCAL_VECTORS = LOCAL_DATA / "vectors"


def unpack(src: Path, dst: Path) -> Path:
    """``src`` (gzip or zstd) decompressed into ``dst``."""
    with src.open("rb") as f, dst.open("wb") as g:
        if src.suffix == ".gz":
            with gzip.open(f) as unzipped:
                shutil.copyfileobj(unzipped, g)
        else:
            zstandard.ZstdDecompressor().copy_stream(f, g)
    return dst


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


class Ext4Image:
    """A test image read through cipherdump's own ext4 reader.

    Pulls an inode's context, data blocks or raw directory entries so that the crypto
    layer can be checked against kernel-written ciphertext.  (This replaced a debugfs
    stopgap; the reader is itself tested against the kernel's views.)
    """

    def __init__(self, path: Path, block_size: int) -> None:
        self.path = path
        self.block_size = block_size
        self.fs = Filesystem(FileSource(str(path)), owns_source=True)
        assert self.fs.block_size == block_size

    @classmethod
    def unpack(cls, compressed: Path, into: Path, block_size: int) -> Ext4Image:
        raw = into / (compressed.name.split(".")[0] + ".img")
        with compressed.open("rb") as src, raw.open("wb") as dst:
            if compressed.suffix == ".gz":
                with gzip.open(src) as unzipped:
                    shutil.copyfileobj(unzipped, dst)
            else:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
        return cls(raw, block_size)

    def close(self) -> None:
        self.fs.close()

    def context(self, ino: int) -> EncryptionContext:
        raw = self.fs.inode(ino).encryption_context
        assert raw is not None, f"inode {ino} has no encryption context"
        return decode_context(raw)

    def file_blocks(self, ino: int) -> bytes:
        """All mapped data blocks of ``ino`` in logical order (holes are not expected)."""
        return b"".join(data for _run, data in self.fs.inode(ino).iter_blocks())

    def dirents(self, ino: int) -> list[tuple[int, bytes]]:
        """(inode, raw name) of each live entry of directory ``ino``, in disk order."""
        return [(e.ino, e.name) for e in self.fs.inode(ino).entries()]
