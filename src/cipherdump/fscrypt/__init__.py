"""fscrypt, independent of any filesystem.

Owns: encryption contexts and policies, no-key names, encrypted symlink payloads, and
(for keyed operations) key derivation and the contents/filenames ciphers.  Inputs are
bytes, inode numbers and data-unit indices; it must not import ``cipherdump.ext4``,
``cipherdump.ondisk``, ``cipherdump.blockio`` or ``cipherdump.repo``.  Only the key
modules ever hold master-key bytes: they are the trust boundary.
"""
