"""Keyed restore: a snapshot, decrypted in user space, written as a plaintext tree.

``restore_plain(view, keyring, target)`` writes the backed-up tree (or ``path`` of it)
under ``target`` with :mod:`cipherdump.engine.plainwrite`, the writer ``extract`` uses:
modes, owners, nanosecond times, xattrs and ACLs (not the encryption context), symlinks,
hard links, special files, and sparse files kept sparse.  Unencrypted parts are written
as they were; encrypted parts need the key of their policy (an object no key given can
decrypt is a problem of its own, never written as ciphertext).  The decryption is the
keyed snapshot view's (:mod:`cipherdump.engine.views.snapshot_keyed`).

Restores resume: what is already under ``target`` and identical is skipped (see
:mod:`~cipherdump.engine.plainwrite`), so an interrupted restore is simply run again.
Nothing is ever written outside ``target``.
"""

from __future__ import annotations

import os

from cipherdump.engine.gctune import few_collections
from cipherdump.engine.plainwrite import WriteResult, write_tree
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.engine.views.snapshot_keyed import KeyedSnapshotView, PlainNode
from cipherdump.fscrypt.keys import KeyRing
from cipherdump.progress import OnProgress

__all__ = ["restore_plain"]


def restore_plain(
    view: SnapshotView,
    keyring: KeyRing,
    target: str | bytes | os.PathLike[str],
    *,
    path: bytes = b"/",
    on_progress: OnProgress | None = None,
) -> tuple[WriteResult, KeyedSnapshotView]:
    """Write the plaintext of ``path`` of the snapshot under ``target``.

    A directory fills ``target`` (created if missing, merged into if it exists, its
    own metadata put on ``target``); a file is written into ``target`` when that is a
    directory, else as ``target``.  Returns the result and the source (whose ``used``
    and ``missing`` say which keys mattered).
    """
    source = KeyedSnapshotView(view, keyring)
    top = source.resolve(path)
    if top.snap.is_dir:
        # The restore target stands for the top directory; its name does not matter.
        top = PlainNode(top.snap, top.name if top.name != b"/" else b".", top.path)
    with few_collections():
        result = write_tree(
            source, top, target, on_progress=on_progress, resume=True, shown_top=path or b"/"
        )
    return result, source
