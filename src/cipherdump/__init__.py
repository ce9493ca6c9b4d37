"""cipherdump: key-less backup and restore of fscrypt-encrypted ext4 filesystems.

Layers (imports flow downward only; ``import-linter`` keeps it so):

    cli      argv -> engine -> rendered output; exit codes; the only place that turns
             on-disk bytes into display strings
    engine   orchestration (listing, backup, restore) that emits events and never prints
    ext4 | fscrypt | repo
             ext4: lazy read-only views of an ext4 filesystem;
             fscrypt: contexts, no-key names, keys and ciphers, knows no filesystem;
             repo: the backup repository format and its storage backends
    ondisk | blockio
             ondisk: pure bytes <-> frozen dataclasses for ext4 structures;
             blockio: read_at over image files, O_DIRECT block devices, memory
    errors   the one error tree
"""

__version__ = "0.1.0"
