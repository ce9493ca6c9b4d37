"""record_maker: the fast constructor of frozen, slotted dataclass records."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from cipherdump.ext4.directory import Entry
from cipherdump.ext4.inode import Run
from cipherdump.ext4.xattr import Xattr
from cipherdump.ondisk.extent import Extent, ExtentIndex, ExtentNode
from cipherdump.ondisk.inode import InodeFields, RawInode, decode_inode, encode_inode
from cipherdump.ondisk.records import record_maker
from cipherdump.ondisk.xattr import XattrEntry


@pytest.mark.parametrize(
    "cls", [RawInode, Run, Xattr, Entry, Extent, ExtentIndex, ExtentNode, XattrEntry]
)
def test_records_are_made_as_their_class_makes_them(cls: Any) -> None:
    make = record_maker(cls)
    assert make is not cls  # the fast way applies to every record the reader decodes
    values = [f"v{i}" for i in range(len(dataclasses.fields(cls)))]
    made: Any = make(*values)
    want: Any = cls(*values)
    assert type(made) is cls
    assert made == want and hash(made) == hash(want) and repr(made) == repr(want)
    for obj in (made, want):
        name = dataclasses.fields(cls)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 1)
        # Python's frozen slotted dataclasses refuse other names with a TypeError.
        with pytest.raises((TypeError, AttributeError)):
            obj.not_a_field = 1
    assert not hasattr(made, "__dict__")
    assert dataclasses.replace(made) == want


def test_defaults_and_keywords() -> None:
    make = record_maker(Run)
    assert make(1, 2, None) == Run(1, 2, None)
    assert make(lblk=1, length=2, pblk=3, unwritten=True) == Run(1, 2, 3, True)
    with pytest.raises(TypeError):
        make(1, 2)  # type: ignore[call-arg]


def test_decoded_inode_is_a_raw_inode() -> None:
    buf = bytes(encode_inode(InodeFields(i_mode=0o100644, i_size=5, i_uid=70000), 256, 32))
    raw = decode_inode(buf, 256)
    assert type(raw) is RawInode
    assert (raw.i_mode, raw.i_size, raw.i_uid, raw.raw) == (0o100644, 5, 70000, buf)


@dataclass(frozen=True, slots=True)
class _WithFactory:
    items: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _WithPostInit:
    value: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")


@dataclass(frozen=True)
class _NoSlots:
    value: int


@pytest.mark.parametrize("cls", [_WithFactory, _WithPostInit, _NoSlots])
def test_other_classes_keep_their_own_constructor(cls: type) -> None:
    assert record_maker(cls) is cls
