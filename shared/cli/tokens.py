"""`openrouter-agent tokens`: issue, list and revoke service tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

import typer

from shared.access.principals import Scope
from shared.access.schemas import ServiceTokenInfo, ServiceTokenIssued, TokenName
from shared.access.service import AccessService
from shared.cli.support import (
    EXIT_INVALID,
    DsnOption,
    JsonOption,
    checked,
    emit_json,
    fail,
    not_an_option,
    operator,
    run,
)

app = typer.Typer(no_args_is_help=True, help="Service tokens: issue, list, revoke.")


@app.command("issue")
def issue(
    name: Annotated[
        str,
        typer.Option(help="What the token is for, e.g. formul8-backend.", callback=not_an_option),
    ],
    scope: Annotated[list[Scope], typer.Option(help="Repeat for several scopes.")],
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Issue a service token. It is printed once, on its own line; store it now."""
    name = checked(TokenName, name, "--name")
    try:
        expires_at = (
            None if expires_in_days is None else datetime.now(UTC) + timedelta(days=expires_in_days)
        )
    except OverflowError:
        fail("expiry_too_far", f"{expires_in_days} days is past any date we store", EXIT_INVALID)
    issued = run(
        dsn,
        lambda runtime: AccessService(runtime).issue_token(
            issued_by=operator(), name=name, scopes=scope, expires_at=expires_at
        ),
    )
    if as_json:  # as POST /api/admin/tokens answers
        emit_json(
            ServiceTokenIssued(token=issued.token, token_info=ServiceTokenInfo.of(issued.record))
        )
        return
    typer.echo(f"issued {issued.record.id} ({', '.join(issued.record.scopes)})", err=True)
    typer.echo(issued.token)


@app.command("list")
def list_tokens(
    include_revoked: Annotated[bool, typer.Option()] = False,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """List service tokens (never the tokens themselves)."""
    records = run(dsn, lambda r: AccessService(r).list_tokens(include_revoked=include_revoked))
    infos = [ServiceTokenInfo.of(record) for record in records]
    if as_json:
        emit_json(list(infos))
        return
    for info in infos:
        state = "revoked" if info.revoked_at else "active"
        typer.echo(
            f"{info.id}  {state:<7}  {info.token_hint}  {info.name}  "
            f"[{', '.join(info.scopes)}]  last used {info.last_used_at or 'never'}"
        )


@app.command("revoke")
def revoke(token_id: UUID, as_json: JsonOption = False, dsn: DsnOption = None) -> None:
    """Revoke a service token; revoking it again changes nothing."""
    record = run(dsn, lambda r: AccessService(r).revoke_token(token_id, revoked_by=operator()))
    if as_json:
        emit_json(ServiceTokenInfo.of(record))  # as DELETE /api/admin/tokens/{id} answers
        return
    typer.echo(f"revoked {record.id} at {record.revoked_at}")
