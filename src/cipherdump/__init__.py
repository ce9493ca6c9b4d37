"""cipherdump: key-less backup and restore of fscrypt-encrypted ext4 filesystems.

Layers (imports flow downward only; ``import-linter`` keeps it so, see pyproject.toml):

    cli      one module a command (``cli/<name>_cmd.py``, each reading images and
             snapshots alike); ``render`` prints, ``sources`` opens; the only place that
             turns on-disk bytes into display strings and errors into exit codes
    fusemount
             the FUSE adapter (mfusepy, the optional ``mount`` extra): requests of the
             kernel to ``engine/mountfs`` calls, errors to errno; nothing else
    engine   orchestration (backup, restore, clone, extract, check) that reports
             ``progress.Progress`` events and problems and never prints; ``engine/views``
             holds the read side: image and snapshot, each without and with keys;
             ``engine/mountfs`` the read-only filesystem model ``mount`` serves
    ext4 | fscrypt | repo
             ext4: lazy read-only views (``Filesystem``, ``Inode``) over operations
             that take a ``Volume`` and an inode number, never a view, so ext4 has no
             import cycle; ``ext4/build`` writes images offline.
             fscrypt: contexts, no-key names, keys and ciphers; knows no filesystem.
             repo: the repository format and its storage backends
    ondisk | blockio
             ondisk: pure bytes <-> frozen dataclasses for ext4 structures;
             blockio: read_at over image files, O_DIRECT block devices, memory
    errors | progress
             the one error tree; the one progress event

What is good here and is to be kept so:

* The layering and its contracts: fscrypt, repo and ext4 never import each other; ext4's
  modules form layers of their own; storage backends know only their protocol.  A
  change that needs an upward import is a change in the wrong layer.
* ``errors.py``: one error tree drawn in its docstring, each class carrying its exit code
  (README's table is tested against it) and structured fields, not formatted strings.
* The ``Backend`` protocol (``repo/backends/base.py``): narrow, keyed by (type, name),
  names validated in one place, an in-memory double, and one conformance suite
  (tests/unit/repo/test_repo_backend_conformance.py) every backend must pass.
* ``fscrypt/keys.py`` as the trust boundary: the only module, with plaintext restore,
  that touches key bytes; keys validated at construction, compared in constant time,
  kept out of ``repr``.
* ``docs/repository-format.md``: the repository format as a contract that defines every
  byte, changed in the same commit as the code.
"""

__version__ = "0.1.0"
