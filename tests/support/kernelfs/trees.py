"""The test tree written into an image through the kernel, and the bytes each of its
files must hold."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kernelfs.uapi import _LIBC, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE

# --- tree builder ---------------------------------------------------------------------------------

# The sizes the task calls interesting: empty, one byte, around one 4 KiB block, and a large
# odd size that does not end on any block or data-unit boundary.
DEFAULT_FILE_SIZES: tuple[int, ...] = (0, 1, 4095, 4096, 4097, 1024 * 1024 + 3)


@dataclass(frozen=True)
class TreeSpec:
    """What ``build_tree`` creates.  Hashable, so it can key a cache of built images."""

    file_sizes: tuple[int, ...] = DEFAULT_FILE_SIZES
    sparse: bool = True
    hardlinks: bool = True
    odd_names: bool = True
    symlinks: bool = True
    specials: bool = True  # FIFO, char device, socket
    xattrs: bool = True
    metadata: bool = True  # chmod / chown / utime with nanoseconds
    subdirs: bool = True
    fragmented: bool = True
    fragments: int = 12  # extents in the fragmented file; > 4 forces depth >= 1
    big_dir_entries: int = 0  # 10_000 makes a 200+ leaf-block htree; ~2 s, so opt-in


DEFAULT_TREE = TreeSpec()

# Fixed timestamps (ns) so views are comparable across builds; odd nanoseconds on purpose.
ATIME_NS = 1_000_000_000 * 1_234_567_890 + 123_456_789
MTIME_NS = 1_000_000_000 * 1_500_000_000 + 987_654_321
LONG_NAME = b"L" * 251 + b".txt"  # 255 bytes, NAME_MAX
UTF8_NAME = "café-ünïcödé-名前-😀.txt".encode()
BAD_UTF8_NAME = b"bad\xff\xfe-not-utf8"
SHORT_TARGET = b"file-0001"  # fast symlink with every padding
MEDIUM_TARGET = b"t" * 200  # slow symlink
LONG_TARGET = b"/" + b"x" * 999  # ~1000 bytes: still fits a 1 KiB block (limit 1021)


@dataclass(frozen=True)
class TreeInfo:
    """What ``build_tree`` made that tests may want to find again (paths relative to root)."""

    files: dict[bytes, int]  # relative path -> size
    fragmented: bytes | None
    sparse: bytes | None
    big_dir: bytes | None
    inodes: dict[bytes, int] = field(default_factory=dict)  # relative path -> st_ino


def pattern(size: int, seed: int) -> bytes:
    """Deterministic non-repeating content (SHA-256 counter stream), so a misplaced block shows."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed.to_bytes(4, "little") + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:size])


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    fn = _LIBC.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if fn(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(mode={mode:#x}): {os.strerror(err)}")


def build_tree(root: Path, spec: TreeSpec = DEFAULT_TREE) -> TreeInfo:
    """Populate ``root`` (normally a freshly encrypted, empty directory) according to ``spec``.

    The first regular file is called ``a``: a one-byte name is the case where padding (to 16,
    then to the policy's multiple) matters most.  Sizes and layouts scale with the block size.
    """
    r = os.fsencode(root)
    bs = os.statvfs(r).f_bsize
    files: dict[bytes, int] = {}
    fragmented = sparse = big_dir = None

    def p(rel: bytes) -> bytes:
        return os.path.join(r, rel)

    for i, size in enumerate(spec.file_sizes):
        rel = b"file-%04d" % i if i else b"a"  # one single-letter name: maximal padding
        with open(p(rel), "wb") as f:
            f.write(pattern(size, i))
        files[rel] = size

    if spec.subdirs:
        os.makedirs(p(b"dir1/dir2/dir3"))
        os.mkdir(p(b"empty-dir"))
        with open(p(b"dir1/dir2/dir3/deep.txt"), "wb") as f:
            f.write(b"deep inside\n")
        files[b"dir1/dir2/dir3/deep.txt"] = 12
        with open(p(b"dir1/in-subdir.bin"), "wb") as f:
            f.write(pattern(3 * bs + 5, 99))
        files[b"dir1/in-subdir.bin"] = 3 * bs + 5

    if spec.hardlinks:
        src = b"hardlink-source.txt"
        with open(p(src), "wb") as f:
            f.write(b"linked three times\n")
        files[src] = 19
        os.link(p(src), p(b"hardlink-same-dir.txt"))
        if spec.subdirs:
            os.link(p(src), p(b"dir1/hardlink-in-subdir.txt"))

    if spec.odd_names:
        for name in (LONG_NAME, UTF8_NAME, BAD_UTF8_NAME):
            with open(p(name), "wb") as f:
                f.write(name)
            files[name] = len(name)

    if spec.symlinks:
        os.symlink(SHORT_TARGET, p(b"link-fast"))
        os.symlink(MEDIUM_TARGET, p(b"link-200"))
        os.symlink(LONG_TARGET, p(b"link-1000"))
        os.symlink(UTF8_NAME, p(b"link-to-utf8"))
        if spec.subdirs:
            os.symlink(b"../" + SHORT_TARGET, p(b"dir1/link-up"))

    if spec.specials:
        os.mkfifo(p(b"fifo"), 0o640)
        os.mknod(p(b"chardev-null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(p(b"blockdev"), stat.S_IFBLK | 0o600, os.makedev(7, 200))
        # mknod(2) makes socket inodes too, without bind()'s 108-byte path limit.
        os.mknod(p(b"socket"), stat.S_IFSOCK | 0o755)

    if spec.sparse:
        sparse = b"sparse.bin"
        # 16 blocks: hole [0,3), data [3,5), hole [5,8), unwritten [8,10), data [10,11),
        # hole to the end (size 16 blocks).
        fd = os.open(p(sparse), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, pattern(2 * bs, 7), 3 * bs)
            _fallocate(fd, FALLOC_FL_KEEP_SIZE, 8 * bs, 2 * bs)
            os.pwrite(fd, pattern(bs - 100, 8), 10 * bs + 50)
            os.ftruncate(fd, 16 * bs)
            os.fsync(fd)
        finally:
            os.close(fd)
        files[sparse] = 16 * bs
        # A file that is nothing but preallocated (unwritten) space, size included.
        fd = os.open(p(b"falloc-only.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, 4 * bs)
        finally:
            os.close(fd)
        files[b"falloc-only.bin"] = 4 * bs

    if spec.fragmented:
        fragmented = b"fragmented.bin"
        _make_fragmented(p(fragmented), p(b"interleaved.bin"), bs, spec.fragments)
        files[fragmented] = 2 * spec.fragments * bs
        files[b"interleaved.bin"] = spec.fragments * bs

    if spec.xattrs:
        target = p(b"file-0002") if len(spec.file_sizes) > 2 else p(b"xattr-file")
        if not os.path.exists(target):
            open(target, "wb").close()
            files[os.path.relpath(target, r)] = 0
        os.setxattr(target, b"user.comment", "plain xattr value — not encrypted".encode())
        os.setxattr(target, b"user.empty", b"")
        os.setxattr(target, b"user.binary", bytes(range(256)))
        if spec.subdirs:
            os.setxattr(p(b"dir1"), b"user.on-dir", b"dir xattr")

    if spec.metadata:
        _apply_metadata(p, spec)

    if spec.big_dir_entries:
        big_dir = b"big-dir"
        os.mkdir(p(big_dir))
        for n in range(spec.big_dir_entries):
            # Names of varying length so that the padding classes are all exercised.
            name = b"entry-%06d-" % n + b"x" * (n % 40)
            os.close(os.open(p(big_dir + b"/" + name), os.O_WRONLY | os.O_CREAT, 0o644))

    os.sync()
    inodes = {rel: os.lstat(p(rel)).st_ino for rel in files}
    for extra in (fragmented, sparse, big_dir):
        if extra is not None:
            inodes[extra] = os.lstat(p(extra)).st_ino
    return TreeInfo(
        files=files, fragmented=fragmented, sparse=sparse, big_dir=big_dir, inodes=inodes
    )


def expected_files(spec: TreeSpec, block_size: int) -> dict[bytes, bytes]:
    """The plaintext ``build_tree`` writes into each regular file, computed without a kernel.

    An oracle for decrypting readers: holes, unwritten ranges and punched blocks read as zeros.
    Hard links appear under every name.
    """
    bs = block_size
    out: dict[bytes, bytes] = {}
    for i, size in enumerate(spec.file_sizes):
        out[b"file-%04d" % i if i else b"a"] = pattern(size, i)
    if spec.subdirs:
        out[b"dir1/dir2/dir3/deep.txt"] = b"deep inside\n"
        out[b"dir1/in-subdir.bin"] = pattern(3 * bs + 5, 99)
    if spec.hardlinks:
        names = [b"hardlink-source.txt", b"hardlink-same-dir.txt"]
        if spec.subdirs:
            names.append(b"dir1/hardlink-in-subdir.txt")
        for name in names:
            out[name] = b"linked three times\n"
    if spec.odd_names:
        for name in (LONG_NAME, UTF8_NAME, BAD_UTF8_NAME):
            out[name] = name
    if spec.sparse:
        data = bytearray(16 * bs)
        data[3 * bs : 5 * bs] = pattern(2 * bs, 7)
        data[10 * bs + 50 : 11 * bs - 50] = pattern(bs - 100, 8)
        out[b"sparse.bin"] = bytes(data)
        out[b"falloc-only.bin"] = bytes(4 * bs)
    if spec.fragmented:
        frag = bytearray()
        other = bytearray()
        for i in range(2 * spec.fragments):
            frag += pattern(bs, 1000 + i) if i % 2 == 0 else bytes(bs)
            if i % 2 == 0:
                other += pattern(bs, 5000 + i)
        out[b"fragmented.bin"] = bytes(frag)
        out[b"interleaved.bin"] = bytes(other)
    if spec.xattrs and len(spec.file_sizes) <= 2:
        out[b"xattr-file"] = b""
    if spec.big_dir_entries:
        for n in range(spec.big_dir_entries):
            out[b"big-dir/entry-%06d-" % n + b"x" * (n % 40)] = b""
    return out


def _make_fragmented(path: bytes, other: bytes, bs: int, fragments: int) -> None:
    """A file with ``fragments`` separate extents, hence an extent tree of depth >= 1.

    Blocks are appended one at a time, alternating with another file and fsync'd, so that the
    allocator cannot lay the file out contiguously; then every other block is punched out, which
    splits whatever runs remain.  The inode's ``i_block`` holds at most 4 extents.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fo = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(2 * fragments):
            os.write(fd, pattern(bs, 1000 + i))
            os.fsync(fd)
            if i % 2 == 0:
                os.write(fo, pattern(bs, 5000 + i))
                os.fsync(fo)
        for i in range(1, 2 * fragments, 2):
            _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, i * bs, bs)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.close(fo)


def _apply_metadata(p: Callable[[bytes], bytes], spec: TreeSpec) -> None:
    """Owners, modes and nanosecond timestamps that a restore must reproduce exactly."""
    first = b"file-0001" if len(spec.file_sizes) > 1 else None
    if first is not None:
        # chown clears set-id bits, so it goes first.
        os.chown(p(first), 1234, 5678)
        os.chmod(p(first), 0o4751)  # setuid + odd permission bits
        os.utime(p(first), ns=(ATIME_NS, MTIME_NS))
    if spec.symlinks:
        os.chown(p(b"link-fast"), 4321, 8765, follow_symlinks=False)
        os.utime(p(b"link-fast"), ns=(ATIME_NS + 1, MTIME_NS + 1), follow_symlinks=False)
    if spec.specials:
        os.utime(p(b"fifo"), ns=(ATIME_NS + 2, MTIME_NS + 2))
    if spec.subdirs:
        os.chmod(p(b"empty-dir"), 0o1777)  # sticky
        os.chown(p(b"empty-dir"), 65534, 65534)
        os.utime(p(b"empty-dir"), ns=(ATIME_NS + 3, MTIME_NS + 3))
        # Directory timestamps last: creating entries above changed them.
        os.utime(p(b"dir1/dir2"), ns=(ATIME_NS + 4, MTIME_NS + 4))
