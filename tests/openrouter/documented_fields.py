"""A copy of OpenRouter's documented response fields (../shared/reference/openrouter-api.md §1,
§2.7, §2.8), kept apart from the emulator so that the emulator is checked against the docs
rather than against itself. Each field: the JSON types it may have (None = JSON null)."""

from __future__ import annotations

NUMBER = (int, float)
STRING = (str,)
BOOL = (bool,)
NULLABLE_NUMBER = (int, float, type(None))
NULLABLE_STRING = (str, type(None))

# The spend figures, lifetime and per window, that key objects and GET /key both carry.
USAGE: dict[str, tuple[type, ...]] = {
    "usage": NUMBER,
    "usage_daily": NUMBER,
    "usage_weekly": NUMBER,
    "usage_monthly": NUMBER,
    "byok_usage": NUMBER,
    "byok_usage_daily": NUMBER,
    "byok_usage_weekly": NUMBER,
    "byok_usage_monthly": NUMBER,
}

KEY_OBJECT: dict[str, tuple[type, ...]] = {
    "hash": STRING,
    "name": STRING,
    "label": STRING,
    "disabled": BOOL,
    "limit": NULLABLE_NUMBER,
    "limit_remaining": NULLABLE_NUMBER,
    "limit_reset": NULLABLE_STRING,
    "include_byok_in_limit": BOOL,
    **USAGE,
    "created_at": STRING,
    "updated_at": NULLABLE_STRING,
    "creator_user_id": NULLABLE_STRING,
    "workspace_id": STRING,
    "expires_at": NULLABLE_STRING,
    "external_user": NULLABLE_STRING,
    "last_used_at": NULLABLE_STRING,
}

CURRENT_KEY: dict[str, tuple[type, ...]] = {
    "label": STRING,
    "limit": NULLABLE_NUMBER,
    "limit_remaining": NULLABLE_NUMBER,
    "limit_reset": NULLABLE_STRING,
    "include_byok_in_limit": BOOL,
    **USAGE,
    "is_free_tier": BOOL,
    "is_management_key": BOOL,
    "is_provisioning_key": BOOL,
    "creator_user_id": NULLABLE_STRING,
    "expires_at": NULLABLE_STRING,
    "rate_limit": (dict,),
}

CREDITS: dict[str, tuple[type, ...]] = {"total_credits": NUMBER, "total_usage": NUMBER}

ERROR_BODY: dict[str, tuple[type, ...]] = {"code": (int,), "message": STRING}


def shape_errors(obj: object, fields: dict[str, tuple[type, ...]]) -> list[str]:
    """Every documented field that is missing or of an undocumented type."""
    if not isinstance(obj, dict):
        return [f"expected an object, got {type(obj).__name__}"]
    problems = []
    for field, types in fields.items():
        if field not in obj:
            problems.append(f"{field}: missing")
        elif isinstance(obj[field], bool) and bool not in types:
            problems.append(f"{field}: bool where {types} documented")
        elif not isinstance(obj[field], types):
            problems.append(f"{field}: {type(obj[field]).__name__} where {types} documented")
    return problems
