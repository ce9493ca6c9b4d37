"""``cipherdump forget``: remove snapshots by id or by a retention policy."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from cipherdump.cli import render
from cipherdump.cli.sources import find_snapshot, open_repository, password_option, repo_option


def show_time(ns: int, utc: bool = False) -> str:
    moment = time.gmtime(ns // 10**9) if utc else time.localtime(ns // 10**9)
    return time.strftime("%Y-%m-%d %H:%M:%S", moment)


F = TypeVar("F", bound=Callable[..., Any])


def _keep(name: str, what: str) -> Callable[[F], F]:
    return click.option(
        f"--keep-{name}",
        f"keep_{name}",
        type=int,
        default=0,
        metavar="N",
        help=f"Keep the {what} (-1: no limit).",
    )


@click.command(name="forget")
@click.argument("refs", nargs=-1, metavar="[SNAPSHOT]...")
@_keep("last", "N newest snapshots")
@_keep("hourly", "newest snapshot of each of the N newest hours")
@_keep("daily", "newest snapshot of each of the N newest days")
@_keep("weekly", "newest snapshot of each of the N newest ISO weeks")
@_keep("monthly", "newest snapshot of each of the N newest months")
@_keep("yearly", "newest snapshot of each of the N newest years")
@click.option(
    "--keep-within",
    metavar="DURATION",
    help="Keep snapshots newer than the newest one less DURATION (as 1y2m3d4h).",
)
@click.option(
    "--keep-tag",
    "keep_tags",
    multiple=True,
    metavar="TAG[,TAG]",
    help="Keep snapshots having all these tags (repeatable: any of the lists).",
)
@click.option(
    "--group-by",
    default="host,uuid,path",
    show_default=True,
    help="Apply the policy to each group of snapshots sharing these (host, uuid, path, "
    "tags; '' for one group).",
)
@click.option("--utc", is_flag=True, help="Read hours, days... in UTC, not local time.")
@click.option("--dry-run", is_flag=True, help="Say what would be kept and why; remove nothing.")
@click.option("--prune", "then_prune", is_flag=True, help="Then prune (if snapshots were removed).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@repo_option
@password_option
@render.one_line_errors
def forget_cmd(
    refs: tuple[str, ...],
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_within: str | None,
    keep_tags: tuple[str, ...],
    group_by: str,
    utc: bool,
    dry_run: bool,
    then_prune: bool,
    as_json: bool,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Remove snapshots: those named, or those a retention policy does not keep.

    Snapshots are grouped (by default by host, filesystem UUID and path) and the
    --keep-* rules applied to each group on its own, as restic does: each rule keeps
    snapshots by itself, and a snapshot any rule keeps stays.  A policy with no rule
    is refused.  Only the snapshots are removed; `prune` (or --prune) frees the data
    no snapshot uses any more.  Takes the repository's exclusive lock (exit 8 while
    another process uses it).
    """
    from datetime import UTC

    from cipherdump.engine.dirtable import TABLE_ATTRS
    from cipherdump.engine.forget import parse_group_by, plan_forget, remove_snapshots
    from cipherdump.engine.retention import Duration, Policy

    within = Duration.parse(keep_within) if keep_within is not None else None
    policy = Policy(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
        within=within,
        tags=tuple(frozenset(t for t in tags.split(",") if t) for tags in keep_tags),
    )
    if refs and not policy.empty:
        raise click.UsageError("give snapshot ids or --keep-* options, not both")
    if not refs and policy.empty:
        raise click.UsageError(
            "no policy: give --keep-* options (or snapshot ids); an empty policy would "
            "remove every snapshot"
        )
    fields = parse_group_by(group_by)
    with open_repository(repo, password_file, lock=not dry_run) as repository:
        if refs:
            found = dict(find_snapshot(repository, ref) for ref in refs)
            plan: list[dict[str, Any]] = [
                {
                    "group": {},
                    "keep": [],
                    "remove": [_entry(i, s.time_ns, (), utc) for i, s in found.items()],
                }
            ]
            doomed = list(found)
        else:
            groups = plan_forget(
                repository.list_snapshots(drop_attrs=TABLE_ATTRS),
                policy,
                fields,
                tz=UTC if utc else None,
                now_ns=time.time_ns(),
            )
            plan = [
                {
                    "group": dict(g.key),
                    "keep": [
                        _entry(d.snapshot.id, d.snapshot.time_ns, d.reasons, utc)
                        for d in g.decisions
                        if d.keep
                    ],
                    "remove": [
                        _entry(d.snapshot.id, d.snapshot.time_ns, (), utc)
                        for d in g.decisions
                        if not d.keep
                    ],
                }
                for g in groups
            ]
            from cipherdump.repo import Id

            doomed = [Id.from_hex(e["id"]) for g in plan for e in g["remove"]]
        if not as_json:
            _show(plan)
        removed = 0 if dry_run else remove_snapshots(repository, doomed)
    pruned = None
    if not as_json:
        if dry_run:
            click.echo(f"would remove {len(doomed)} snapshots (dry run: nothing changed)")
        else:
            click.echo(f"removed {removed} snapshots")
    if then_prune and removed:
        # The lock was released in between: prune takes it again, and reads the
        # snapshots afresh (a backup finished meanwhile is respected).
        from cipherdump.cli.prune_cmd import run_prune, show_prune

        pruned = run_prune(repo, password_file)
        if not as_json:
            show_prune(pruned)
    if as_json:
        out = {"dry_run": dry_run, "groups": plan, "removed": removed, "prune": pruned}
        click.echo(render.dumps(out))


def _entry(sid: Any, time_ns: int, reasons: tuple[str, ...], utc: bool) -> dict[str, Any]:
    hexid = sid if isinstance(sid, str) else sid.hex
    return {
        "id": hexid,
        "time": show_time(time_ns, utc),
        "time_ns": time_ns,
        "reasons": list(reasons),
    }


def _show(plan: list[dict[str, Any]]) -> None:
    for group in plan:
        if group["group"]:
            click.echo(", ".join(f"{k} {v or '-'}" for k, v in group["group"].items()) + ":")
        for title, key in (("keep", "keep"), ("remove", "remove")):
            items = group[key]
            if not items:
                continue
            click.echo(f"  {title} {len(items)} snapshots:")
            for item in items:
                why = f"  {', '.join(item['reasons'])}" if item["reasons"] else ""
                click.echo(f"    {item['id'][:8]}  {item['time']}{why}")
