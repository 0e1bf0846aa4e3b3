"""`openrouter-agent keys`: create, rotate (also in an emergency), revoke, show, list, rewrap;
and `openrouter-agent reconcile`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated
from uuid import UUID

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from shared.cli.support import (
    EXIT_INVALID,
    DsnOption,
    JsonOption,
    checked,
    count_of,
    emit_json,
    fail,
    not_an_option,
    operator,
    run,
)
from shared.emergency.endpoints import EmergencyDryRun, EmergencyReason, EmergencyRotationInfo
from shared.emergency.service import EmergencyRotationService, EmergencyScope, EmergencyStatus
from shared.keys.domain import Owner
from shared.keys.schemas import (
    CurrentKeyResponse,
    KeyInfo,
    KeyIssuedResponse,
    Reason,
    ReconcileResult,
    SystemName,
    TierName,
    UserId,
)
from shared.keys.service import KeyLifecycleService
from shared.money import usd_display
from shared.runtime import Runtime
from shared.usage import report_service
from shared.usage.schemas import KeyPage

app = typer.Typer(no_args_is_help=True, help="Keys: create, rotate, revoke, show, list.")

UserOption = Annotated[
    str | None, typer.Option("--user", help="A user's id.", callback=not_an_option)
]
SystemOption = Annotated[
    str | None, typer.Option("--system", help="A system key's name.", callback=not_an_option)
]
TierOption = Annotated[str | None, typer.Option(help="A tier.", callback=not_an_option)]
ReasonOption = Annotated[
    str | None, typer.Option(help="Why; kept in the audit trail.", callback=not_an_option)
]


def _owner(user: str | None, system: str | None) -> Owner:
    """The owner named by --user or --system, checked as the HTTP API checks its ids."""
    if (user is None) == (system is None):
        raise typer.BadParameter("give exactly one of --user and --system")
    if user is not None:
        return Owner.user(checked(UserId, user, "--user"))
    return Owner.system(checked(SystemName, system, "--system"))


class KeysPerSecondColumn(ProgressColumn):
    """The rate of replaced keys, as rich measures it over the last updates."""

    def render(self, task: Task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:.1f} keys/s")


def _print_issued(issued: KeyIssuedResponse, verb: str) -> None:
    typer.echo(f"{verb} {issued.key.id} for {issued.key.owner}", err=True)
    if issued.secret is not None:
        typer.echo(issued.secret)  # on its own line, once, as `tokens issue` does


@app.command("create")
def create(
    user: UserOption = None,
    system: SystemOption = None,
    tier: Annotated[
        str | None, typer.Option(help="The user's tier (default: free).", callback=not_an_option)
    ] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Create a key; its secret is printed once, on its own line."""
    owner = _owner(user, system)
    tier = checked(TierName, tier, "--tier")
    issued = run(
        dsn,
        lambda r: KeyLifecycleService(r).create_key(owner, actor=operator(), tier=tier),
    )
    response = KeyIssuedResponse.of(issued)
    if as_json:
        emit_json(response)
    else:
        _print_issued(response, "created")


@app.command("rotate")
def rotate(
    user: Annotated[
        list[str] | None,
        typer.Option(
            "--user", help="A user's id (repeat it for an emergency).", callback=not_an_option
        ),
    ] = None,
    system: SystemOption = None,
    grace_seconds: Annotated[int | None, typer.Option(min=0, max=86_400)] = None,
    reason: ReasonOption = None,
    emergency: Annotated[
        bool, typer.Option(help="Disable at once, then replace, every key in the scope.")
    ] = False,
    all_keys: Annotated[bool, typer.Option("--all", help="Emergency scope: every key.")] = False,
    tier: Annotated[
        list[str] | None, typer.Option(help="Emergency scope: a tier.", callback=not_an_option)
    ] = None,
    key: Annotated[list[UUID] | None, typer.Option(help="Emergency scope: a key id.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Emergency: list the scope only.")] = False,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Rotate one owner's key; or, with --emergency, every key in a scope, with progress."""
    if emergency:
        # Checked as the API's emergency-rotate request checks its user ids, tiers and reason.
        if all_keys and (user or tier or key):
            fail(
                "invalid_argument",
                "--all covers every key: give no --user, --tier or --key",
                EXIT_INVALID,
            )
        scope = EmergencyScope(
            everything=all_keys,
            user_ids=tuple(checked(list[UserId], user or [], "--user")),
            tiers=tuple(checked(list[TierName], tier or [], "--tier")),
            key_ids=tuple(key or ()),
        )
        if all_keys == bool(scope.user_ids or scope.tiers or scope.key_ids):
            raise typer.BadParameter("give --all, or at least one of --user, --tier, --key")
        if reason is None:
            raise typer.BadParameter("an emergency rotation needs --reason")
        reason = checked(EmergencyReason, reason, "--reason")
        _emergency(scope, reason, dry_run=dry_run, as_json=as_json, dsn=dsn)
        return
    if all_keys or tier or key or dry_run:
        fail(
            "invalid_argument",
            "--all, --tier, --key and --dry-run are for --emergency only",
            EXIT_INVALID,
        )
    if user is not None and len(user) > 1:
        fail("invalid_argument", "a rotation is of one owner: give --user once", EXIT_INVALID)
    owner = _owner(None if user is None else user[0], system)
    reason = checked(Reason, reason, "--reason")
    issued = run(
        dsn,
        lambda r: KeyLifecycleService(r).rotate_key(
            owner, actor=operator(), grace_seconds=grace_seconds, reason=reason
        ),
    )
    response = KeyIssuedResponse.of(issued)
    if as_json:
        emit_json(response)
    else:
        _print_issued(response, "rotated to")


def _emergency(
    scope: EmergencyScope, reason: str, *, dry_run: bool, as_json: bool, dsn: str | None
) -> None:
    if dry_run:
        keys = run(dsn, lambda r: EmergencyRotationService(r).keys_in_scope(scope))
        result = EmergencyDryRun(total=len(keys), keys=[KeyInfo.of(k) for k in keys])
        if as_json:
            emit_json(result)
        else:
            typer.echo(f"{count_of(result.total, 'key')} in scope (nothing changed):")
            for info in result.keys:
                typer.echo(f"  {info.id}  {info.owner}")
        return

    async def rotate_all(runtime: Runtime) -> EmergencyStatus:
        service = EmergencyRotationService(runtime)
        status = await service.start(
            scope, reason=reason, actor=operator(), request_id=None, time_budget_s=0
        )
        # This command works the job itself, a few seconds at a time, drawing its progress;
        # if it is interrupted, the every-minute job carries on from where it stopped.
        columns = (
            TextColumn("[bold]emergency rotation"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            KeysPerSecondColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), disable=as_json) as progress:
            task = progress.add_task("keys", total=status.rotation.total, failed=0)
            while status.rotation.status == "running":
                await service.process(status.rotation.id, time_budget_s=2.0)
                status = await service.status(status.rotation.id)
                progress.update(
                    task, completed=status.count("replaced"), failed=status.count("failed")
                )
                if status.count("pending") + status.count("disabled") == 0:
                    break
        return status

    final = EmergencyRotationInfo.of(run(dsn, rotate_all))
    if as_json:
        emit_json(final)
    else:
        typer.echo(
            f"emergency rotation {final.id}: {final.replaced} replaced, {final.failed} failed,"
            f" {final.pending + final.disabled} left (status {final.status})"
        )
    if final.failed:
        raise typer.Exit(1)


@app.command("revoke")
def revoke(
    key_id: UUID,
    reason: ReasonOption = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Delete a key at OpenRouter and mark it revoked; doing it again changes nothing."""
    reason = checked(Reason, reason, "--reason")
    key = run(
        dsn,
        lambda r: KeyLifecycleService(r).revoke_key(
            key_id, actor=operator(), reason=reason, request_id=None
        ),
    )
    if as_json:
        emit_json(KeyInfo.of(key))  # as DELETE /api/keys/{id} answers
        return
    typer.echo(f"revoked {key.id} ({key.owner})")


@app.command("show")
def show(
    user: UserOption = None,
    system: SystemOption = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """An owner's current key (metadata, never the secret) and its rotation in progress."""
    owner = _owner(user, system)

    async def current(runtime: Runtime) -> CurrentKeyResponse:
        return CurrentKeyResponse.of(await KeyLifecycleService(runtime).describe(owner))

    response = run(dsn, current)
    if as_json:
        emit_json(response)
        return
    key = response.key
    typer.echo(f"{key.id}  {key.owner}  {key.state}  limit {usd_display(key.limit_usd)}")
    typer.echo(f"created {key.created_at}  activated {key.activated_at}")
    if response.rotation is not None:
        typer.echo(f"operation in progress: {response.rotation.id} ({response.rotation.status})")


@app.command("list")
def list_keys(
    status: Annotated[str | None, typer.Option(help="pending, current, previous, ...")] = None,
    tier: TierOption = None,
    user: UserOption = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    cursor: Annotated[str | None, typer.Option(help="From a previous page's next_cursor.")] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Keys newest first, a page at a time."""
    user, tier = checked(UserId, user, "--user"), checked(TierName, tier, "--tier")
    page: KeyPage = run(
        dsn,
        lambda r: report_service.keys_page(
            r, cursor=cursor, limit=limit, status=status, tier=tier, user_id=user
        ),
    )
    if as_json:
        emit_json(page)
        return
    table = Table("key", "owner", "tier", "state", "limit", "created")
    for info in page.data:
        table.add_row(
            str(info.id),
            info.owner,
            info.tier or "",
            info.state,
            usd_display(info.limit_usd),
            info.created_at.isoformat(timespec="seconds"),
        )
    Console().print(table)
    if page.next_cursor:
        typer.echo(f"next page: --cursor {page.next_cursor}")


@app.command("rewrap")
def rewrap(as_json: JsonOption = False, dsn: DsnOption = None) -> None:
    """Re-wrap every data key under the current master key (or KMS key).

    Run after setting a new ENCRYPTION_MASTER_KEY (or KMS_KEY_ID) with the old master key in
    ENCRYPTION_PREVIOUS_MASTER_KEYS; afterwards the old key can be dropped.
    """
    count = run(dsn, lambda r: KeyLifecycleService(r).rewrap_all(actor=operator()))
    if as_json:
        emit_json({"rewrapped": count})
        return
    typer.echo(f"re-wrapped {count_of(count, 'data key')}")


def reconcile(as_json: JsonOption = False, dsn: DsnOption = None) -> None:
    """Make OpenRouter and the database agree: delete orphans, replace keys gone missing."""
    report = run(
        dsn,
        lambda r: KeyLifecycleService(r).reconcile(actor=operator(), request_id=None),
    )
    result = ReconcileResult(**asdict(report))
    if as_json:
        emit_json(result)
        return
    typer.echo(
        f"deleted at OpenRouter: {len(result.deleted_at_openrouter)}; "
        f"revoked as missing: {len(result.revoked_missing)}; "
        f"re-provisioned: {len(result.reprovisioned)}; "
        f"too young to judge: {result.too_young_to_judge}"
    )
