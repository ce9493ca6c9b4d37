"""``cipherdump completion SHELL``: the script that makes a shell complete cipherdump's
commands, options and their choices."""

from __future__ import annotations

import click

from cipherdump.cli import render

# The variable click's completion protocol runs by (``_<PROG>_COMPLETE``, as click
# names it for the program ``cipherdump``): the script calls cipherdump with it set.
COMPLETE_VAR = "_CIPHERDUMP_COMPLETE"

SHELLS = ("bash", "zsh", "fish")


@click.command(name="completion")
@click.argument("shell", type=click.Choice(SHELLS), metavar="SHELL")
@click.pass_context
@render.one_line_errors
def completion_cmd(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash  ~/.bashrc: eval "$(cipherdump completion bash)"
    zsh   ~/.zshrc:  eval "$(cipherdump completion zsh)"
    fish  cipherdump completion fish > ~/.config/fish/completions/cipherdump.fish
    """
    from click.shell_completion import get_completion_class

    root = ctx.find_root()
    completion = get_completion_class(shell)
    assert completion is not None  # one of SHELLS, which click has
    try:
        # Always for `cipherdump`, the installed command, whatever ran this one.
        script = completion(root.command, {}, "cipherdump", COMPLETE_VAR).source()
    except RuntimeError as err:  # click refuses bash before 4.4
        raise click.ClickException(str(err)) from None
    click.echo(script)
