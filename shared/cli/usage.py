"""`openrouter-agent usage report`, `reset-usage`, and `tiers list / set / user`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared.cli.support import (
    EXIT_INVALID,
    DsnOption,
    JsonOption,
    checked,
    checked_body,
    count_of,
    emit_json,
    fail,
    not_an_option,
    operator,
    run,
)
from shared.errors import ValidationFailed
from shared.keys.domain import current_period, parse_period
from shared.keys.schemas import TierName, UserId
from shared.money import MICRO_DOLLAR, usd_display, usd_text
from shared.usage import report_service
from shared.usage.budgets import BudgetService
from shared.usage.schemas import (
    Breakdown,
    CurrentUsage,
    KeyLimitOutcome,
    MonthUsage,
    ResetUsageRequest,
    ResetUsageResponse,
    SystemUsage,
    TierBudgetUpdate,
    TierInfo,
    TierList,
    UserShare,
)
from shared.usage.service import UsageService
from shared.users.schemas import UserTierChange, UserTierChanged
from shared.users.service import UsersService

app = typer.Typer(no_args_is_help=True, help="Usage: a user's month, or the month system-wide.")
tiers_app = typer.Typer(no_args_is_help=True, help="Subscription tiers and their budgets.")


_money = usd_display


def _books(books: MonthUsage | SystemUsage) -> str:
    """Gross, corrections, unreported, adjustments and net said the same way in every report."""
    return (
        f"events {_money(books.events_usd)} over {count_of(books.events, 'event')}, "
        f"corrected {_money(books.corrected_usd)}, unreported {_money(books.unreported_usd)}, "
        f"adjustments {_money(books.adjustments_usd)}"
    )


def _breakdown_table(title: str, rows: list[Breakdown]) -> Table:
    table = Table("name", "cost", "events", title=title)
    for row in rows:
        table.add_row(row.name, _money(row.cost_usd), f"{row.events:,}")
    return table


def _shares_table(title: str, rows: list[UserShare]) -> Table:
    table = Table("user", "tier", "spent", "limit", "%", title=title)
    for row in rows:
        percent = "" if row.percent_used is None else usd_text(row.percent_used)
        table.add_row(row.user_id, row.tier, _money(row.spent_usd), _money(row.limit_usd), percent)
    return table


@app.command("report")
def report(
    user: Annotated[
        str | None, typer.Option("--user", help="One user's month.", callback=not_an_option)
    ] = None,
    period: Annotated[
        str | None, typer.Option(help="YYYY-MM (system-wide only); default this month.")
    ] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """A user's month (spent, limit, remaining, by model and agent, forecast), or the month
    system-wide (by tier, model and agent; top users; users over 80 and 100 %; drift)."""
    console = Console()
    user = checked(UserId, user, "--user")
    if user is not None and period is not None:
        raise typer.BadParameter("--period is for the month system-wide; --user shows this month")
    if user is not None:
        mine: CurrentUsage = run(dsn, lambda r: UsageService(r).current(user))
        if as_json:
            emit_json(mine)
            return
        console.print(
            f"[bold]{mine.user_id}[/] ({mine.tier}) {mine.period:%Y-%m}: spent "
            f"{_money(mine.spent_usd)} of {_money(mine.limit_usd)} "
            f"({_books(mine)}"
            "), remaining "
            f"{_money(mine.remaining_usd)}; forecast {_money(mine.forecast_month_end_usd)}"
        )
        console.print(_breakdown_table("events by model", mine.by_model))
        console.print(_breakdown_table("events by agent", mine.by_agent))
        return
    try:
        month = current_period() if period is None else parse_period(period)
    except ValidationFailed as error:
        raise typer.BadParameter("--period is YYYY-MM") from error
    system: SystemUsage = run(dsn, lambda r: report_service.system_usage(r, month))
    if as_json:
        emit_json(system)
        return
    books = _books(system)
    console.print(
        f"[bold]{system.period:%Y-%m}[/]: spent {_money(system.spent_usd)} ({books}) by "
        f"{count_of(system.users, 'user')}"
    )
    console.print(_breakdown_table("events by tier", system.by_tier))
    console.print(_breakdown_table("events by model", system.by_model))
    console.print(_breakdown_table("events by agent", system.by_agent))
    console.print(_shares_table("top users", system.top_users))
    console.print(_shares_table("over 80 %", system.over_80_percent))
    console.print(_shares_table("over 100 %", system.over_100_percent))
    drift = Table("user", "OpenRouter", "ledger", "drift", title="drift from OpenRouter")
    for row in system.drift:
        drift.add_row(
            row.user_id, _money(row.openrouter_usd), _money(row.ledger_usd), _money(row.drift_usd)
        )
    console.print(drift)


def reset_usage(
    reason: Annotated[
        str, typer.Option(help="Why; kept in the audit trail.", callback=not_an_option)
    ],
    user: Annotated[str | None, typer.Option("--user", callback=not_an_option)] = None,
    tier: Annotated[str | None, typer.Option("--tier", callback=not_an_option)] = None,
    all_users: Annotated[bool, typer.Option("--all")] = False,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Give users their whole budget back this month (an adjustment; nothing deleted)."""
    if sum((user is not None, tier is not None, all_users)) != 1:
        raise typer.BadParameter("give exactly one of --user, --tier, --all")
    request = checked_body(  # as POST /api/admin/reset-usage checks it
        ResetUsageRequest,
        {"reason": "--reason", "user_id": "--user", "tier": "--tier"},
        reason=reason,
        user_id=user,
        tier=tier,
        all=all_users,
    )
    outcomes = run(
        dsn,
        lambda r: BudgetService(r).reset(
            user_id=request.user_id,
            tier=request.tier,
            everyone=request.all,
            reason=request.reason,
            actor=operator(),
            request_id=None,
        ),
    )
    response = ResetUsageResponse.of(outcomes)
    if as_json:
        emit_json(response)
        return
    for result in response.users:
        typer.echo(f"{result.user_id}: adjusted {_money(result.amount_usd)}; {_key_limit(result)}")


@tiers_app.command("list")
def tiers_list(as_json: JsonOption = False, dsn: DsnOption = None) -> None:
    """The tiers and their monthly budgets."""
    tiers = TierList.of(run(dsn, lambda r: BudgetService(r).tiers()))
    if as_json:
        emit_json(tiers)
        return
    table = Table("tier", "monthly budget", "description")
    for tier in tiers.data:
        table.add_row(tier.tier, _money(tier.monthly_budget_usd), tier.description)
    Console().print(table)


@tiers_app.command("set")
def tiers_set(
    tier: str,
    budget: Annotated[str, typer.Argument(help="USD per month, or 'unlimited'.")],
    reason: Annotated[
        str | None, typer.Option(help="Why; kept in the audit trail.", callback=not_an_option)
    ] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Change a tier's monthly budget; keys follow at their next budget application."""
    tier = checked(TierName, tier, "TIER")
    # As PUT /api/admin/tiers/{tier} checks it: a finite number of USD from 0 to 10,000,000.
    update = checked_body(
        TierBudgetUpdate,
        {"monthly_budget_usd": "BUDGET", "reason": "--reason"},
        monthly_budget_usd=None if budget.strip().lower() == "unlimited" else budget,
        reason=reason,
    )
    amount = update.monthly_budget_usd
    if amount is not None and amount != amount.quantize(MICRO_DOLLAR):
        # Key limits are kept in micro-dollars: a finer budget could never be applied as set.
        fail("invalid_input", "BUDGET: at most 6 decimal places (micro-dollars)", EXIT_INVALID)
    name, new_budget, description = run(
        dsn,
        lambda r: BudgetService(r).set_tier_budget(
            tier, amount, actor=operator(), reason=update.reason, request_id=None
        ),
    )
    if as_json:  # as PUT /api/admin/tiers/{tier} answers
        emit_json(TierInfo(tier=name, monthly_budget_usd=new_budget, description=description))
        return
    typer.echo(f"{name}: {_money(new_budget)} a month")


@tiers_app.command("user")
def tiers_user(
    user_id: str,
    tier: str,
    reason: Annotated[str | None, typer.Option(callback=not_an_option)] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Move a user to a tier; their key's limit follows at once."""
    user_id = checked(UserId, user_id, "USER_ID")
    change = checked_body(  # as PUT /api/users/{user_id}/tier checks it
        UserTierChange, {"tier": "TIER", "reason": "--reason"}, tier=tier, reason=reason
    )
    written = run(
        dsn,
        lambda r: UsersService(r).put(
            user_id,
            tier=change.tier,
            rotation_policy=None,
            actor=operator(),
            reason=change.reason,
            request_id=None,
            must_exist=True,
        ),
    )
    changed = UserTierChanged.of(written)
    if as_json:
        emit_json(changed)
        return
    typer.echo(f"{user_id}: {changed.previous_tier} -> {changed.tier}; {_key_limit(changed)}")


def _key_limit(outcome: KeyLimitOutcome) -> str:
    if outcome.key_limit_status == "pending":
        return "key limit pending (applied when the operation in progress ends)"
    if outcome.key_limit_status == "no_key":
        return "no key yet"
    return "key limit " + ("unlimited" if outcome.key_unlimited else _money(outcome.key_limit_usd))
