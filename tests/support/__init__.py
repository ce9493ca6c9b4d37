"""Test helpers, imported by their own names (pyproject.toml puts this folder on the
path): ``kernelfs`` (real encrypted ext4 images made with the running kernel),
``vm61`` (the Linux 6.1 guest), ``shared_data`` (where ``../shared`` and
``tests/data`` are), ``fscrypt_vectors`` (the kernel-made vectors), ``repo_formats``,
``restore_checks`` (e2fsck and view comparisons) and ``timebound`` (runs under a time
and memory limit).  No test lives here.
"""
