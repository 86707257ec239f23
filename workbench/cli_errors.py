"""The CLI's contract for a user's mistake: one `error: ...` line per problem, exit code 2."""

from __future__ import annotations

import functools

import typer


def user_errors(fn):
    """Turn ValueErrors (bad input, named field) into `error:` lines on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:  # a ScenarioError carries one line per problem
            for line in str(e).splitlines() or [type(e).__name__]:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2) from None

    return wrapper
