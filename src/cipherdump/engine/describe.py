"""Plain-data descriptions of filesystems and inodes, for ``info``, ``ls`` and ``stat``.

Everything returned is JSON-ready except names and targets, which stay ``bytes`` until
the CLI renders them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Filesystem, Inode
from cipherdump.ext4.inode import InodeType
from cipherdump.ext4.journal import JournalInfo
from cipherdump.fscrypt.context import EncryptionContext, decode_context, mode_name
from cipherdump.ondisk.dirhash import hash_version_name
from cipherdump.ondisk.inode import FLAG_NAMES
from cipherdump.ondisk.superblock import EXT2_ERROR_FS, EXT2_VALID_FS


def node_record(ns: Namespace, node: ImageNode) -> dict[str, Any]:
    """The fields ``ls --json`` prints for one object (``stat`` prints a superset)."""
    ino = node.inode
    rec: dict[str, Any] = {
        "path": node.path,
        "name": node.name,
        "type": ino.type.value,
        "mode": ino.mode & 0o7777,
        "uid": ino.uid,
        "gid": ino.gid,
        "size": ino.size,
        "mtime_ns": ino.mtime_ns,
        "inode": ino.ino,
        "links": ino.links,
        "encrypted": ino.is_encrypted,
        "name_encrypted": node.name_encrypted,
    }
    if ino.type is InodeType.SYMLINK:
        target = ns.symlink_target(ino)
        rec["target"] = target
        if ino.is_encrypted:
            # Without the key the kernel reports the length of the no-key target, not
            # i_size (2 + ciphertext length): fscrypt-on-disk.md 2.7.  stat shows i_size.
            rec["size"] = len(target)
    if ino.device is not None:
        rec["rdev"] = list(ino.device)
    return rec


def stat_record(ns: Namespace, node: ImageNode) -> dict[str, Any]:
    """Every inode field, the decoded context, the name ciphertext and the block map.

    ``size`` is what ``stat`` shows without the key; ``i_size`` the on-disk field.
    """
    ino = node.inode
    raw = ino.raw
    rec = node_record(ns, node)
    rec.update(
        {
            "i_size": ino.size,
            "atime_ns": ino.atime_ns,
            "ctime_ns": ino.ctime_ns,
            "crtime_ns": ino.crtime_ns,
            "dtime": raw.i_dtime,
            "flags": ino.flags,
            "flag_names": [n for bit, n in FLAG_NAMES.items() if ino.flags & bit],
            "generation": ino.generation,
            "project_id": ino.project_id,
            "blocks": ino.st_blocks,
            "file_acl": raw.i_file_acl,
            "extra_isize": raw.i_extra_isize,
            "version": raw.i_version,
            "inline_data": ino.has_inline_data,
            "casefold": ino.is_casefolded,
        }
    )
    if node.name_encrypted:
        rec["name_ciphertext_hex"] = node.raw_name.hex()
        if node.stored_hash is not None:
            rec["stored_hash"] = list(node.stored_hash)
    xattrs = []
    for x in ino.xattrs:
        xattrs.append(
            {"name": x.full_name, "index": x.index, "where": x.where, "value_hex": x.value.hex()}
        )
    rec["xattrs"] = xattrs
    ctx_raw = ino.encryption_context
    if ctx_raw is not None:
        rec["context"] = context_record(ctx_raw)
    if ino.type is InodeType.SYMLINK and ino.is_encrypted:
        rec["symlink_stored_hex"] = ino.symlink_data().hex()
    rec["extents"] = [
        {"lblk": r.lblk, "length": r.length, "pblk": r.pblk, "unwritten": r.unwritten}
        for r in ino.runs
    ]
    return rec


def context_record(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"hex": raw.hex()}
    try:
        ctx = decode_context(raw)
    except CipherdumpError as err:
        out["error"] = str(err)
        return out
    p = ctx.policy
    out.update(
        {
            "version": p.version,
            "contents_mode": p.contents_mode,
            "contents_mode_name": mode_name(p.contents_mode),
            "filenames_mode": p.filenames_mode,
            "filenames_mode_name": mode_name(p.filenames_mode),
            "flags": p.flags,
            "flag_names": p.flag_names(),
            "log2_data_unit_size": p.log2_data_unit_size,
            ("key_descriptor" if p.version == 1 else "key_identifier"): p.key_spec.hex(),
            "nonce": ctx.nonce.hex(),
            "policy": p.describe(),
        }
    )
    return out


def fs_info(fs: Filesystem) -> dict[str, Any]:
    """Superblock summary, state, and the encryption policies in use with inode counts."""
    sb = fs.sb
    clean = bool(sb.s_state & EXT2_VALID_FS) and not sb.s_state & EXT2_ERROR_FS
    policies: Counter[str] = Counter()
    policy_facts: dict[str, dict[str, Any]] = {}
    bad_contexts = 0
    unreadable = 0
    for ino in fs.iter_used_inodes():
        try:
            inode = fs.inode(ino)
            if not inode.is_encrypted:
                continue
            raw = inode.encryption_context
        except CipherdumpError:
            unreadable += 1
            continue
        if raw is None:
            bad_contexts += 1
            continue
        try:
            ctx = decode_context(raw)
        except CipherdumpError:
            bad_contexts += 1
            continue
        key = ctx.policy.describe()
        policies[key] += 1
        policy_facts.setdefault(key, _policy_facts(ctx))
    return {
        "uuid": _uuid(sb.s_uuid),
        "volume_name": sb.s_volume_name.rstrip(b"\0"),
        "block_size": fs.block_size,
        "blocks_count": sb.s_blocks_count,
        "free_blocks": sb.s_free_blocks_count,
        "inodes_count": sb.s_inodes_count,
        "free_inodes": sb.s_free_inodes_count,
        "inode_size": sb.inode_size,
        "groups": sb.group_count,
        "features": sb.feature_names,
        "state": "clean" if clean and (fs.journal_replayed or not fs.needs_recovery) else "dirty",
        "needs_recovery": fs.needs_recovery,
        "journal": journal_record(fs.journal),
        # Orphans are read as the kernel's mount leaves them: deleted, or truncated.
        "orphans": {
            "deleted": len(fs.orphans.deleted),
            "truncated": len(fs.orphans.truncated),
        },
        "hash_seed": sb.s_hash_seed.hex(),
        "default_hash": hash_version_name(sb.s_def_hash_version),
        "hash_signedness": "unsigned" if sb.dirhash_unsigned else "signed",
        "mkfs_time": sb.s_mkfs_time,
        "encryption_policies": [
            {**policy_facts[k], "policy": k, "inodes": n} for k, n in policies.most_common()
        ],
        "encrypted_inodes_without_valid_context": bad_contexts,
        "unreadable_inodes": unreadable,
        "warnings": list(fs.warnings),
    }


def journal_record(journal: JournalInfo | None) -> dict[str, Any] | None:
    """What ``info`` shows of the journal, and of its replay in memory."""
    if journal is None:
        return None
    plan = journal.replay
    return {
        "inode": journal.inum,
        "external": journal.inum == 0,
        "size": journal.size,
        "version": journal.version,
        "features": list(journal.features),
        "clean": journal.clean,
        "replayed": None
        if plan is None
        else {
            "transactions": plan.transactions,
            "blocks": len(plan.overlay),
            "block_copies": plan.replayed,
            "revokes": plan.revokes,
            "revoked_copies": plan.revoke_hits,
            "first_transaction": plan.first_transaction,
            "end_transaction": plan.end_transaction,
            "discarded_uncommitted_blocks": plan.discarded_blocks,
        },
    }


def _policy_facts(ctx: EncryptionContext) -> dict[str, Any]:
    p = ctx.policy
    return {
        "version": p.version,
        "contents_mode": mode_name(p.contents_mode),
        "filenames_mode": mode_name(p.filenames_mode),
        "flags": p.flag_names(),
        ("key_descriptor" if p.version == 1 else "key_identifier"): p.key_spec.hex(),
        "ties_to_filesystem": p.ties_to_filesystem,
    }


def _uuid(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iter_ciphertext(inode: Inode, data_unit_size: int) -> Iterator[bytes]:
    """The file's stored bytes in whole data units: ``round_up(i_size, DU)`` bytes.

    Holes and unwritten extents come out as zeros (there is no ciphertext for them).
    """
    total = -(-inode.size // data_unit_size) * data_unit_size
    bs = inode.fs.block_size
    chunk = 256 * bs
    pos = 0
    while pos < total:
        n = min(chunk, total - pos)
        data = (
            inode.read_raw(pos, pos + n)
            if not inode.has_inline_data
            else (inode.inline_data()[pos : pos + n].ljust(n, b"\0"))
        )
        yield data
        pos += n


def data_unit_size(inode: Inode) -> int:
    raw = inode.encryption_context
    if raw is None:
        return inode.fs.block_size
    try:
        return decode_context(raw).policy.data_unit_size(inode.fs.block_size)
    except CipherdumpError:
        return inode.fs.block_size
