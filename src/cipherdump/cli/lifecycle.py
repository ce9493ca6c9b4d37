"""The commands that keep a repository over years (forget, tag, prune, unlock, key,
stats), one module each; listed here so that ``main`` registers them in one line."""

from __future__ import annotations

import click

from cipherdump.cli.forget_cmd import forget_cmd
from cipherdump.cli.key_cmd import key_group
from cipherdump.cli.prune_cmd import prune_cmd
from cipherdump.cli.stats_cmd import stats_cmd
from cipherdump.cli.tag_cmd import tag_cmd
from cipherdump.cli.unlock_cmd import unlock_cmd

LIFECYCLE_COMMANDS: tuple[click.Command, ...] = (
    forget_cmd,
    tag_cmd,
    prune_cmd,
    unlock_cmd,
    stats_cmd,
)
LIFECYCLE_GROUPS: tuple[click.Group, ...] = (key_group,)
