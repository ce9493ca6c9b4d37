"""The packs an in-memory index names, numbered as they are added.

Every index kept in memory (the full one, the lean one of a backup, prune's) stores a
small pack number per blob instead of the pack's 32-byte id; this is the table those
numbers point into, with each pack's size as its index file gave it.
"""

from __future__ import annotations

from collections.abc import Iterator

from cipherdump.repo.ids import Id


class PackTable:
    def __init__(self) -> None:
        self._packs: list[Id] = []
        self._pack_sizes: list[int] = []
        self._pack_numbers: dict[Id, int] = {}

    @property
    def pack_count(self) -> int:
        return len(self._packs)

    def has_pack(self, pack_id: Id) -> bool:
        return pack_id in self._pack_numbers

    def pack_size(self, pack_id: Id) -> int | None:
        """The indexed size of a pack, or None if no index file names it."""
        number = self._pack_numbers.get(pack_id)
        return None if number is None else self._pack_sizes[number]

    def iter_packs(self) -> Iterator[tuple[Id, int]]:
        """(pack id, pack size) of every indexed pack, by pack number from 0."""
        yield from zip(self._packs, self._pack_sizes, strict=True)

    def _pack_number(self, pack_id: Id, size: int) -> int:
        """The number of ``pack_id``, given one if it is new (with ``size``)."""
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = len(self._packs)
            self._packs.append(pack_id)
            self._pack_sizes.append(size)
            self._pack_numbers[pack_id] = number
        return number
