"""The read side: four views of a tree, and what they share.

- an ext4 image, without keys: :mod:`.image` (``Namespace``);
- an ext4 image, with keys: :mod:`.image_keyed` (``KeyedNamespace``);
- a snapshot, without keys: :mod:`.snapshot` (``SnapshotView``);
- a snapshot, with keys: :mod:`.snapshot_keyed` (``KeyedSnapshotView``).

Every view resolves a typed path with :func:`.paths.resolve_path` (``.``, ``..``, "not
a directory" once for all), names paths in messages with :func:`.paths.show_path`, and
the keyed ones make their ciphers through :class:`.decrypt.InodeCiphers`.  The key-less
views show encrypted names as Linux does without the key (no-key names); the keyed ones
decrypt where a key given matches and fall back to no-key names elsewhere.
:mod:`.diff` compares two snapshot views.

Views read and describe; they never write and never print.  This package imports
nothing at its top, so that loading one view loads only what that view needs.
"""
