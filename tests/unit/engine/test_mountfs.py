"""The FUSE-independent mount model: path requests, records, the blob cache and the
repository layout's refresh, on synthetic nodes (the kernel tier mounts real FUSE)."""

from __future__ import annotations

import errno
import json
import stat
from collections.abc import Mapping

import pytest

from cipherdump.engine import keyless_records as records
from cipherdump.engine.mountfs.model import Attr, MountNode, MountTree
from cipherdump.engine.mountfs.records import (
    ObjectFacts,
    decode_filesystem_record,
    filesystem_record,
    object_records,
    object_xattrs,
)
from cipherdump.engine.mountfs.repository import REFRESH_SECONDS, RepositoryLayout
from cipherdump.engine.mountfs.snapshot import BlobCache, snapshot_ino
from cipherdump.engine.restore_image import TargetFacts
from cipherdump.errors import CipherdumpError
from cipherdump.ondisk.acl import ACL_GROUP_OBJ, ACL_OTHER, ACL_USER_OBJ, encode_ext4_acl
from cipherdump.ondisk.inode import EXT4_ENCRYPT_FL
from cipherdump.repo import BlobType, Id, Snapshot


class File(MountNode):
    def __init__(self, ino: int, data: bytes, xattrs: dict[str, bytes] | None = None) -> None:
        self.ino, self.data, self._x = ino, data, xattrs or {}

    def attr(self) -> Attr:
        return Attr(ino=self.ino, mode=stat.S_IFREG | 0o644, size=len(self.data))

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def xattrs(self) -> Mapping[str, bytes]:
        return self._x


class Dir(MountNode):
    def __init__(self, ino: int, kids: dict[bytes, MountNode], *, volatile: bool = False) -> None:
        self.ino, self.kids, self._volatile, self.listed = ino, kids, volatile, 0

    def attr(self) -> Attr:
        return Attr(ino=self.ino, mode=stat.S_IFDIR | 0o755, nlink=2)

    def children(self) -> Mapping[bytes, MountNode]:
        self.listed += 1
        return dict(self.kids)

    @property
    def volatile(self) -> bool:
        return self._volatile


def test_requests_by_path() -> None:
    f = File(12, b"hello", {"user.x": b"1"})
    sub = Dir(11, {b"f": f, b"g": f})
    tree = MountTree(Dir(2, {b"sub": sub}))
    assert tree.getattr(b"/").ino == 2
    assert tree.getattr(b"/sub/f") == tree.getattr(b"/sub/g")  # links: one inode
    assert [n for n, _ in tree.readdir(b"/sub")] == [b"f", b"g"]
    assert tree.read(b"/sub/f", 1, 3) == b"ell"
    assert tree.listxattr(b"/sub/f") == ["user.x"]
    assert tree.getxattr(b"/sub/f", "user.x") == b"1"
    for call, code in (
        (lambda: tree.getattr(b"/nope"), errno.ENOENT),
        (lambda: tree.getattr(b"/sub/f/x"), errno.ENOTDIR),
        (lambda: tree.getxattr(b"/sub/f", "user.y"), errno.ENODATA),
        (lambda: tree.read(b"/sub", 0, 1), errno.EISDIR),
        (lambda: tree.readlink(b"/sub/f"), errno.EINVAL),
    ):
        with pytest.raises(OSError) as caught:
            call()
        assert caught.value.errno == code


def test_listings_are_cached_within_a_bound_and_volatile_ones_never() -> None:
    dirs = {b"d%d" % i: Dir(100 + i, {b"f": File(200 + i, b"")}) for i in range(5)}
    live = Dir(3, {b"f": File(4, b"")}, volatile=True)
    tree = MountTree(Dir(2, {**dirs, b"live": live}), listings=2)
    for _ in range(3):
        tree.getattr(b"/d0/f")
        tree.getattr(b"/live/f")
    assert dirs[b"d0"].listed == 1
    assert live.listed == 3
    for name in dirs:
        tree.getattr(b"/" + name + b"/f")
    tree.getattr(b"/d0/f")  # evicted by the others: listed again
    assert dirs[b"d0"].listed == 2


def _facts(**kw: object) -> ObjectFacts:
    base: dict[str, object] = dict(
        kind="file", ino=12, flags=EXT4_ENCRYPT_FL, size=5, links=1, context=b"C" * 40,
        raw_name=b"N" * 16, name_encrypted=True,
    )  # fmt: skip
    base.update(kw)
    return ObjectFacts(**base)  # type: ignore[arg-type]


def test_records_where_dump_puts_them() -> None:
    got = object_records(_facts(stored_hash=(1, 2)))
    assert got == {
        "size": b"5",
        "context": b"C" * 40,
        "name": b"N" * 16,
        "hash": (1).to_bytes(4, "little") + (2).to_bytes(4, "little"),
        "ino": b"12",
        "flags": str(EXT4_ENCRYPT_FL).encode(),
    }
    assert set(records.ALL) >= set(got)
    plain = _facts(flags=0, name_encrypted=False, context=None)
    # A key-less view: every object carries ino and flags (so a copy that dropped
    # them is caught), every file its size.
    assert object_records(plain) == {"size": b"5", "ino": b"12", "flags": b"0"}
    # A keyed view: records only on what is still shown encrypted.
    assert object_records(plain, everywhere=False) == {}


def test_own_xattrs_as_getxattr_shows_them() -> None:
    acl = encode_ext4_acl([(ACL_USER_OBJ, 6, None), (ACL_GROUP_OBJ, 4, None), (ACL_OTHER, 4, None)])
    own = [
        (1, b"comment", b"v"),
        (7, b"data", b"inline"),  # system.data: not shown
        (9, b"c", b"context"),  # the context: a record instead
        (2, b"", acl),
        (6, b"selinux", b"label"),
    ]
    got = object_xattrs(own, None)
    assert list(got) == ["user.comment", "system.posix_acl_access", "security.selinux"]
    assert got["system.posix_acl_access"][:4] == (2).to_bytes(4, "little")  # version 2


def test_symlinks_and_special_files_carry_their_records_as_trusted_xattrs() -> None:
    """Linux refuses user.* xattrs on them; root reads and copies trusted.*."""
    link = _facts(kind="symlink", symlink=b"\x10\x00" + b"s" * 16, ino=20)
    got = object_xattrs([], link)
    assert sorted(got) == [
        "trusted.cipherdump.context",
        "trusted.cipherdump.flags",
        "trusted.cipherdump.ino",
        "trusted.cipherdump.name",
        "trusted.cipherdump.symlink",
    ]
    assert got["trusted.cipherdump.symlink"] == link.symlink
    fifo = object_xattrs([], _facts(kind="fifo", flags=0, context=None, ino=22))
    assert sorted(fifo) == [
        "trusted.cipherdump.flags",
        "trusted.cipherdump.ino",
        "trusted.cipherdump.name",
    ]
    directory = object_xattrs([], _facts(kind="dir"))
    assert (
        all(n.startswith(records.XATTR_PREFIX) for n in directory)
        and "user.cipherdump.size" not in directory
    )


def test_filesystem_record_round_trips_to_target_facts() -> None:
    facts = TargetFacts(
        block_size=1024, inode_size=256, inodes_count=8192, blocks_count=32768,
        blocks_per_group=8192, uuid=bytes(range(16)), hash_seed=bytes(range(16, 32)),
        def_hash_version=1, s_flags=2, features=("encrypt", "extent"),
        log_groups_per_flex=4, volume_name=b"vol",
    )  # fmt: skip
    data = filesystem_record(facts)
    assert json.loads(data)["uuid"] == bytes(range(16)).hex()
    assert TargetFacts.from_mapping(decode_filesystem_record(data)) == facts


class _Repo:
    def __init__(self) -> None:
        self.loads: list[Id] = []
        self.snaps: list[tuple[Id, Snapshot]] = []
        self.listings = 0

    def load_blob(self, blob_type: BlobType, blob_id: Id) -> bytes:
        self.loads.append(blob_id)
        return bytes(100)

    def list_snapshots(
        self, damaged: list[CipherdumpError], drop_attrs: object = ()
    ) -> list[tuple[Id, Snapshot]]:
        self.listings += 1
        return list(self.snaps)


def test_blob_cache_keeps_at_most_its_bound() -> None:
    repo = _Repo()
    cache = BlobCache(repo, 250)  # type: ignore[arg-type]
    ids = [Id(bytes([i]) * 32) for i in range(3)]
    for i in ids + ids[1:]:
        cache.get(i)
    assert cache.used <= 250
    assert repo.loads == ids  # the two most recent stayed
    cache.get(ids[0])
    assert repo.loads == [*ids, ids[0]]


def test_inode_numbers_are_stable_per_snapshot_and_differ_between_them() -> None:
    a, b = Id(b"a" * 32), Id(b"b" * 32)
    assert snapshot_ino(a, 12) == snapshot_ino(a, 12) >= 1024
    assert snapshot_ino(a, 12) != snapshot_ino(b, 12)
    assert snapshot_ino(a, 12) != snapshot_ino(a, 13)


def test_layout_and_the_snapshot_list_read_at_most_every_minute() -> None:
    repo = _Repo()
    tree_id = Id(bytes(32))
    first = Id(bytes.fromhex("ab" * 32))
    repo.snaps = [(first, Snapshot(tree_id, 10, hostname="h1", tags=("t/x", "daily")))]
    now = [1000.0]
    problems: list[bytes] = []
    layout = RepositoryLayout(
        repo,  # type: ignore[arg-type]
        cache_bytes=1 << 20,
        clock=lambda: now[0],
        on_problem=lambda path, err: problems.append(path),
    )
    tree = MountTree(layout.root)
    names = [n for n, _ in tree.readdir(b"/")]
    assert names == [b"snapshots", b"ids", b"hosts", b"tags", b"latest"]
    assert tree.readlink(b"/latest") == b"snapshots/abababab"
    assert tree.readlink(b"/ids/" + first.hex.encode()) == b"../snapshots/abababab"
    assert [n for n, _ in tree.readdir(b"/tags")] == [b"daily"]  # 't/x' cannot be a name
    assert tree.readlink(b"/hosts/h1/latest") == b"../../snapshots/abababab"
    # A second snapshot whose id starts alike: both get longer names.
    second = Id(bytes.fromhex("abababab" + "cd" * 28))
    repo.snaps.append((second, Snapshot(tree_id, 20, hostname="h1")))
    now[0] += REFRESH_SECONDS - 1
    assert [n for n, _ in tree.readdir(b"/snapshots")] == [b"abababab", b"latest"]
    assert repo.listings == 1
    now[0] += 1
    listed = [n for n, _ in tree.readdir(b"/snapshots")]
    assert listed == [b"abababababab", b"ababababcdcd", b"latest"]
    assert tree.readlink(b"/snapshots/latest") == b"ababababcdcd"
    assert repo.listings == 2
    # These snapshots hold no filesystem: listed, reported once, unreadable (EIO).
    with pytest.raises(CipherdumpError, match="not a cipherdump filesystem snapshot"):
        tree.readdir(b"/snapshots/abababababab")
    assert problems == [b"/snapshots/abababab", b"/snapshots/ababababcdcd"]  # once each
