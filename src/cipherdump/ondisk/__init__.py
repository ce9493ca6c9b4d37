"""ext4 on-disk structures: pure ``bytes`` <-> frozen dataclasses, no I/O.

Owns: superblock, group descriptors, inodes, extent tree nodes, directory entries and
htree nodes, extended attribute entries, checksums and the directory hash.  Field names
follow the kernel's ``fs/ext4/ext4.h`` so they grep against it.  Must not import
anything above ``cipherdump.errors``.
"""
