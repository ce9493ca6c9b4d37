"""``cipherdump info IMAGE``: superblock summary, features, state, journal and
encryption policies."""

from __future__ import annotations

from typing import Any

import click

from cipherdump.cli import render, sources


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def info(image: str, as_json: bool) -> None:
    """Superblock summary, features, state and encryption policies of IMAGE."""
    from cipherdump.engine.describe import fs_info

    with sources.open_image(image) as fs:
        rec = fs_info(fs)
    if as_json:
        click.echo(render.dumps(rec))
        return
    rows = [
        ("UUID", rec["uuid"]),
        ("Volume name", render.show_bytes(rec["volume_name"]) or "<none>"),
        ("State", rec["state"] + _recovery_note(rec)),
        ("Block size", str(rec["block_size"])),
        ("Blocks", f"{rec['blocks_count']} ({rec['free_blocks']} free)"),
        ("Inodes", f"{rec['inodes_count']} ({rec['free_inodes']} free), {rec['inode_size']} bytes"),
        ("Groups", str(rec["groups"])),
        ("Features", " ".join(rec["features"])),
        (
            "Directory hash",
            f"{rec['default_hash']} ({rec['hash_signedness']}), seed {rec['hash_seed']}",
        ),
    ]
    if rec["journal"] is not None:
        rows.append(("Journal", _journal_line(rec["journal"])))
    orphans = rec["orphans"]
    if orphans["deleted"] or orphans["truncated"]:
        rows.append(
            (
                "Orphan inodes",
                f"{orphans['deleted']} deleted, {orphans['truncated']} truncated"
                " (as the kernel finishes them on mount)",
            )
        )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k + ':':<{width + 1}} {v}")
    pols = rec["encryption_policies"]
    click.echo(f"Encryption policies: {len(pols) if pols else 'none'}")
    for p in pols:
        tie = " (tied to inode numbers and UUID)" if p["ties_to_filesystem"] else ""
        click.echo(f"  {p['inodes']:>7} inodes  {p['policy']}{tie}")
    if rec["encrypted_inodes_without_valid_context"]:
        click.echo(
            f"  {rec['encrypted_inodes_without_valid_context']} encrypted inodes have no "
            "valid encryption context"
        )


def _recovery_note(rec: dict[str, Any]) -> str:
    if not rec["needs_recovery"]:
        return ""
    journal = rec["journal"]
    if journal is not None and journal["replayed"] is not None:
        return " (journal replayed in memory)"
    return " (journal needs recovery)"


def _journal_line(journal: dict[str, Any]) -> str:
    """``info``'s line on the journal: where, how big, its features, what was replayed."""
    if journal["external"]:
        return "external device"
    parts = [f"inode {journal['inode']}"]
    if journal["version"]:
        parts.append(f"{journal['size'] / (1 << 20):g} MiB, v{journal['version']}")
        parts.append(" ".join(journal["features"]) or "no features")
    replayed = journal["replayed"]
    if replayed is not None:
        parts.append(
            f"replayed in memory: {replayed['transactions']} transactions,"
            f" {replayed['blocks']} blocks"
        )
    else:
        parts.append("empty" if journal["clean"] else "has data, not replayed")
    return "; ".join(parts)
