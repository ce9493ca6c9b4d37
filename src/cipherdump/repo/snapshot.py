"""Snapshots: a root tree plus when, where and what, sealed in a file of its own.

A snapshot file is ``header("CDsn") || seal(plaintext, aad = header)``, named by the
unkeyed BLAKE3 of the file.  Plaintext (codec)::

    {"v": 1, "tree": bytes(32), "time_ns": int, "hostname": str, "tags": [str, ...],
     "attrs": map, "parent": bytes(32) (only if present)}
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.repo import codec
from cipherdump.repo.codec import Value
from cipherdump.repo.crypto import MasterKey
from cipherdump.repo.envelope import Magic, open_file, seal_file
from cipherdump.repo.ids import Id

SNAPSHOT_VERSION = 1
_KEYS = frozenset({"v", "tree", "time_ns", "hostname", "tags", "attrs", "parent"})


@dataclass(frozen=True, slots=True)
class Snapshot:
    tree: Id
    time_ns: int
    hostname: str = ""
    tags: tuple[str, ...] = ()
    parent: Id | None = None
    attrs: Mapping[str, Value] = field(default_factory=dict)


def encode_snapshot(key: MasterKey, snap: Snapshot) -> bytes:
    m: dict[str, Value] = {
        "v": SNAPSHOT_VERSION,
        "tree": snap.tree.raw,
        "time_ns": snap.time_ns,
        "hostname": snap.hostname,
        "tags": list(snap.tags),
        "attrs": snap.attrs,
    }
    if snap.parent is not None:
        m["parent"] = snap.parent.raw
    return seal_file(key, Magic.SNAPSHOT, codec.encode(m))


class _EveryAttr:
    def __contains__(self, name: object) -> bool:
        return True


# For ``drop_attrs``: a snapshot's when, where and root only.
EVERY_ATTR: Container[str] = _EveryAttr()


def decode_snapshot(
    key: MasterKey, data: bytes, what: str, drop_attrs: Container[str] = ()
) -> Snapshot:
    m = codec.expect_map(codec.decode(open_file(key, Magic.SNAPSHOT, data, what), what), what)
    version = codec.get_int(m, "v", what)
    if version > SNAPSHOT_VERSION:
        raise UnsupportedError(f"{what}: snapshot version {version} is newer than this program")
    if version != SNAPSHOT_VERSION or not set(m) <= _KEYS:
        raise CorruptError("bad snapshot fields", structure=what)
    tags = codec.get_list(m, "tags", what)
    if not all(isinstance(t, str) for t in tags):
        raise CorruptError("tags are not strings", structure=what)
    return Snapshot(
        tree=Id(codec.get_bytes(m, "tree", what)),
        time_ns=codec.get_int(m, "time_ns", what),
        hostname=codec.get_str(m, "hostname", what),
        tags=tuple(t for t in tags if isinstance(t, str)),
        parent=Id(codec.get_bytes(m, "parent", what)) if "parent" in m else None,
        attrs={k: v for k, v in codec.get_map(m, "attrs", what).items() if k not in drop_attrs},
    )
