"""`openrouter-agent audit verify`: recompute the audit trail's hash chain."""

from __future__ import annotations

import typer

from shared.audit.service import verify_chain
from shared.cli.support import EXIT_PROBLEM, DsnOption, JsonOption, count_of, emit_json, run

app = typer.Typer(no_args_is_help=True, help="The audit trail.")


@app.command("verify")
def verify(as_json: JsonOption = False, dsn: DsnOption = None) -> None:
    """Recompute the audit hash chain. Exit 0 if intact, 1 at the first broken row."""
    result = run(dsn, verify_chain)
    intact = result.broken_seq is None
    if as_json:
        emit_json(
            {
                "intact": intact,
                "rows_checked": result.rows_checked,
                "broken_seq": result.broken_seq,
                "problem": result.problem,
            }
        )
    elif intact:
        typer.echo(f"audit chain intact: {count_of(result.rows_checked, 'row')}")
    else:
        typer.echo(
            f"audit chain broken at row {result.broken_seq}: {result.problem}"
            f" ({count_of(result.rows_checked, 'row')})",
            err=True,
        )
    if not intact:
        raise typer.Exit(EXIT_PROBLEM)
