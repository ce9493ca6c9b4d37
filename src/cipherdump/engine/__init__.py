"""Orchestration: joins the ext4 reader, fscrypt and the repository into operations.

Owns: the namespace a user sees (no-key names, typed-path resolution), listings,
inode descriptions, and later backup and restore.  Emits data and events; never
prints.  May import ``ext4``, ``fscrypt``, ``repo``, ``ondisk``; never ``cli``.
"""
