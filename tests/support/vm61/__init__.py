"""A second kernel for the tests: Debian's Linux 6.1, booted under QEMU.

The host kernel lacks casefolding (CONFIG_UNICODE), ESSIV and Adiantum, so images using
them can only be checked by a kernel that has them.  This module fetches Debian's
``linux-image-6.1.0-*-amd64-unsigned`` with ``apt-get download`` (never installed: only
unpacked with ``dpkg-deb -x``) into a cache, keeps its ``vmlinuz`` and the modules the
guest needs, builds a busybox initramfs around ``init.sh`` and the static helper
``fsh.c``, and boots it with the images as virtio disks named by their serials.  The
guest writes what it saw as a tar stream onto one more disk and powers off.

The cache is ``$CIPHERDUMP_TEST_CACHE`` or ``~/.cache/cipherdump-tests``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_RE = re.compile(r"^linux-image-6\.1\.0-(\d+)-amd64-unsigned$")

# What the guest loads, in any order (dependencies are added from the modules' own
# modinfo).  ext4 and virtio are modules in Debian's config; fscrypt itself is built in,
# with its ciphers as modules: XTS/CTS-CBC, ESSIV (CBC is built in), Adiantum (XChaCha12,
# NH-Poly1305, AES), SHA-512 for the v2 key derivation, and CRC32C for metadata_csum.
# Debian does not build HCTR2 at all (CONFIG_CRYPTO_HCTR2 is off).
MODULES = (
    "virtio_pci", "virtio_blk", "crc32c_generic", "crc32c_intel", "ext4",
    "aesni_intel", "ecb", "xts", "cts", "essiv", "sha512_generic", "sha512_ssse3",
    "chacha_generic", "chacha_x86_64", "nhpoly1305", "nhpoly1305_sse2", "nhpoly1305_avx2",
    "poly1305_generic", "adiantum",
)  # fmt: skip


def cache_dir() -> Path:
    root = os.environ.get("CIPHERDUMP_TEST_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "cipherdump-tests"


def missing() -> str | None:
    """Why the guest cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "the Linux 6.1 guest tier runs as root (it reads the vectors' keys into a VM)"
    for tool, package in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("gcc", "gcc"),
        ("mkfs.ext4", "e2fsprogs"),
        ("zstd", "zstd"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if _busybox() is None:
        return "no static busybox (apt-get install busybox-static)"
    if not Path("/usr/lib/x86_64-linux-gnu/libc.a").exists():
        return "no static libc for the guest helper (apt-get install libc6-dev)"
    if not _cached_kernels() and (
        shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None
    ):
        return "no cached Linux 6.1 and no apt-get/dpkg-deb to fetch one"
    return None


def _busybox() -> Path | None:
    """busybox-static's binary (a dynamic busybox would need a libc in the initramfs)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(candidate)
        if p.is_file() and b"ld-linux" not in p.read_bytes()[:8192]:
            return p
    return None


def kvm_usable() -> bool:
    """KVM only where the CPU shows hardware virtualisation: on a nested host whose
    /dev/kvm exists without VT-x/AMD-V, a KVM guest hangs instead of failing."""
    forced = os.environ.get("CIPHERDUMP_VM_ACCEL")
    if forced:
        return forced == "kvm"
    try:
        flags = Path("/proc/cpuinfo").read_text()
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M))


# --- the kernel -------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    package: str  # e.g. linux-image-6.1.0-57-amd64-unsigned_6.1.192-3
    root: Path  # vmlinuz, config, modules/*.ko, modules.order

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def module_order(self) -> list[str]:
        return (self.root / "modules.order").read_text().split()


def _modules_key() -> str:
    return hashlib.sha256(" ".join(MODULES).encode()).hexdigest()[:10]


def _cached_kernels() -> list[Path]:
    base = cache_dir() / "linux-6.1"
    if not base.is_dir():
        return []
    done = [p for p in base.iterdir() if (p / "ready").exists() and p.name.endswith(_modules_key())]
    return sorted(done, key=lambda p: _abi(p.name))


def _abi(name: str) -> tuple[int, str]:
    m = re.search(r"6\.1\.0-(\d+)-amd64", name)
    return (int(m.group(1)) if m else -1, name)


def _newest_package() -> str | None:
    """The newest linux-image-6.1.0-N-amd64-unsigned apt knows, or None."""
    if shutil.which("apt-cache") is None:
        return None
    proc = subprocess.run(
        ["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    names = [line.split(" ", 1)[0] for line in proc.stdout.splitlines()]
    names = [n for n in names if PACKAGE_RE.match(n)]
    if not names:
        return None
    return max(names, key=lambda n: int(PACKAGE_RE.match(n).group(1)))  # type: ignore[union-attr]


def prepare_kernel() -> Kernel:
    """The newest Debian Linux 6.1 apt offers, unpacked into the cache once; else the
    newest one cached before."""
    package = _newest_package()
    cached = _cached_kernels()
    if package is not None:
        for p in cached:
            if p.name.startswith(package + "_"):
                return Kernel(p.name.rsplit("-", 1)[0], p)
        try:
            return _download(package)
        except (OSError, subprocess.CalledProcessError, RuntimeError):
            if not cached:
                raise
    if not cached:
        raise RuntimeError("apt knows no linux-image-6.1.0-*-amd64-unsigned (apt-get update?)")
    return Kernel(cached[-1].name.rsplit("-", 1)[0], cached[-1])


def _download(package: str) -> Kernel:
    base = cache_dir() / "linux-6.1"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix=".dl-") as tmp:
        # apt's sandbox user cannot write into root's cache: a harmless warning.
        subprocess.run(
            ["apt-get", "download", "-q", package], cwd=tmp, check=True, capture_output=True
        )
        (deb,) = Path(tmp).glob("*.deb")
        tree = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        (vmlinuz,) = (tree / "boot").glob("vmlinuz-*")
        version = vmlinuz.name.removeprefix("vmlinuz-")
        out = Path(tmp) / "out"
        (out / "modules").mkdir(parents=True)
        shutil.copy(vmlinuz, out / "vmlinuz")
        shutil.copy(tree / "boot" / f"config-{version}", out / "config")
        order = _module_closure(tree / "lib" / "modules" / version, out / "modules")
        (out / "modules.order").write_text("\n".join(order) + "\n")
        (out / "ready").write_text(version + "\n")
        stem = deb.name.removesuffix("_amd64.deb")
        final = base / f"{stem}-{_modules_key()}"
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    return Kernel(stem, final)


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _module_closure(moddir: Path, dest: Path) -> list[str]:
    """Copy MODULES and what they depend on into ``dest``; the load order, dependencies
    first.  Names the config builds in are skipped."""
    files = {
        p.name.removesuffix(".ko").replace("-", "_"): p for p in (moddir / "kernel").rglob("*.ko")
    }
    builtin = {
        Path(line).name.removesuffix(".ko").replace("-", "_")
        for line in (moddir / "modules.builtin").read_text().split()
    }
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            if name in builtin:
                return
            raise RuntimeError(f"module {name} is neither in the package nor built in")
        for dep in _modinfo_depends(files[name]):
            visit(dep)
        shutil.copy(files[name], dest / files[name].name)
        order.append(files[name].name)

    for name in MODULES:
        visit(name)
    return order


# --- the guest helper and initramfs -------------------------------------------------------


def build_fsh(out: Path) -> Path:
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-o", str(out), str(HERE / "fsh.c")],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def _cpio_newc(entries: Sequence[tuple[str, int, bytes, int]]) -> bytes:
    """An uncompressed newc archive of (name, mode, data, rdev) entries."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(raw), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        pad()
        out.write(data)
        pad()
    return out.getvalue()


def build_initramfs(
    kernel: Kernel, fsh: Path, jobs: str, files: dict[str, bytes], out: Path
) -> Path:
    busybox = _busybox()
    assert busybox is not None
    d, x, r = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
    entries: list[tuple[str, int, bytes, int]] = [
        (name, d, b"", 0) for name in ("bin", "dev", "proc", "sys", "mnt", "out", "jobs", "modules")
    ]
    entries += [
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5 << 8) | 1),
        ("init", x, (HERE / "init.sh").read_bytes(), 0),
        ("bin/busybox", x, busybox.read_bytes(), 0),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", 0),
        ("bin/fsh", x, fsh.read_bytes(), 0),
        ("modules.order", r, "\n".join(kernel.module_order).encode() + b"\n", 0),
        ("jobs.sh", r, jobs.encode(), 0),
    ]
    entries += [(f"modules/{n}", r, (kernel.root / "modules" / n).read_bytes(), 0)
                for n in kernel.module_order]  # fmt: skip
    entries += [(f"jobs/{name}", r, data, 0) for name, data in sorted(files.items())]
    out.write_bytes(_cpio_newc(entries))
    return out


# --- a boot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    files: dict[str, bytes]  # what the guest wrote into /out
    console: str
    seconds: float
    accel: str


def boot(
    kernel: Kernel, initramfs: Path, disks: Sequence[tuple[str, Path, bool]], work: Path,
    timeout: float = 900,
) -> Boot:  # fmt: skip
    """Boot the guest with ``disks`` as (serial, image, read-only) virtio disks plus the
    results disk; return what it wrote there."""
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.raw"
    with open(results, "wb") as f:
        f.truncate(256 << 20)
    accel = "kvm" if kvm_usable() else "tcg"
    console = work / "console.log"
    cmd = [
        "qemu-system-x86_64", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
        "-smp", "2", "-m", "1536", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-serial", f"file:{console}",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs),
        "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]  # fmt: skip
    all_disks = [*disks, ("results", results, False)]
    for k, (serial, image, readonly) in enumerate(all_disks):
        ro = ",readonly=on" if readonly else ""
        cmd += ["-drive", f"file={image},if=none,id=d{k},format=raw,cache=writeback{ro}",
                "-device", f"virtio-blk-pci,drive=d{k},serial={serial}"]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        qemu_out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else ""
        raise RuntimeError(
            f"the Linux 6.1 guest did not power off in {timeout} s:\n{tail}"
        ) from None
    seconds = time.monotonic() - start
    text = console.read_text(errors="replace") if console.exists() else ""
    if proc.returncode != 0:
        raise RuntimeError(f"qemu exited {proc.returncode}: {qemu_out.decode()[-2000:]}")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(results, "r:") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    files[member.name.removeprefix("./")] = handle.read()
    except tarfile.TarError as e:
        raise RuntimeError(f"the guest wrote no results ({e}); console:\n{text[-3000:]}") from e
    return Boot(files, text, seconds, accel)


def escape(name: bytes) -> str:
    """A name as fsh prints it: bytes outside '!'..'~' and the backslash as \\xHH."""
    return "".join(chr(c) if 0x20 < c < 0x7F and c != 0x5C else f"\\x{c:02x}" for c in name)


def unescape(text: str) -> bytes:
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode())
