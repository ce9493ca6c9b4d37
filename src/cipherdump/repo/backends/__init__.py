"""Storage backends: bytes stored and fetched by (file type, name), nothing more.

A backend knows no format, no key and no blob: it must not import anything from
``cipherdump.repo`` except :mod:`cipherdump.repo.backends.base` and
:mod:`cipherdump.repo.ids`.  Every backend passes the one conformance suite in
``tests/unit/repo/test_repo_backend_conformance.py``.
"""
