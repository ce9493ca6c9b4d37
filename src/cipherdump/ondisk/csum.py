"""CRC32C as ext4 uses it: the raw ``crc32c_le`` update, without final inversion."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import struct
from collections.abc import Callable

_MASK = 0xFFFFFFFF
_INO_GEN = struct.Struct("<II")


def _load_crc32c() -> Callable[[bytes | memoryview, int], int]:
    """The ``crc32c`` package's compiled ``crc32c(data, value)``.

    Loaded from its extension module without running the package's ``__init__``, which
    imports ``importlib.metadata`` (and through it ``email``, ``zipfile`` and a score
    of other modules) only to set ``__version__``: 20 ms of every start of the program
    with a warm cache and twice that with a cold one (measured), a twentieth of an
    incremental backup.  Any surprise in the package's layout falls back to a plain
    import.
    """
    try:
        spec = importlib.util.find_spec("crc32c")
        locations = spec.submodule_search_locations if spec is not None else None
        for folder in locations or ():
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "_crc32c" + suffix)
                if os.path.isfile(path):
                    loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
                    module_spec = importlib.util.spec_from_loader(loader.name, loader)
                    if module_spec is None:
                        continue
                    module = importlib.util.module_from_spec(module_spec)
                    loader.exec_module(module)
                    function: Callable[[bytes | memoryview, int], int] = module.crc32c
                    return function
    except (ImportError, OSError, AttributeError):
        pass
    import crc32c

    return crc32c.crc32c


_crc32c = _load_crc32c()


def crc32c_le(seed: int, data: bytes | memoryview) -> int:
    """The kernel's ``crc32c(seed, data)``: continue a CRC without pre/post inversion."""
    # The library computes the standard, inverted CRC; undo both inversions around it.
    return (~_crc32c(data, (~seed) & _MASK)) & _MASK


def fs_csum_seed(uuid: bytes) -> int:
    """The per-filesystem checksum seed when ``metadata_csum_seed`` is not set."""
    return crc32c_le(_MASK, uuid)


def inode_csum_seed(fs_seed: int, ino: int, generation: int) -> int:
    """Seed for everything that belongs to one inode (inode, extents, dir blocks)."""
    # One update over both words equals the kernel's two (CRC updates chain).
    return crc32c_le(fs_seed, _INO_GEN.pack(ino, generation))


def crc16(crc: int, data: bytes) -> int:
    """CRC16 (ANSI, reflected 0xA001) used by the old ``uninit_bg`` descriptor checksum."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc & 0xFFFF
