"""A copy of OpenRouter's documented response fields (../shared/reference/openrouter-api.md §1,
§2.7-§2.10), kept apart from the emulator so that the emulator is checked against the docs
rather than against itself. Each field: the JSON types it may have (None = JSON null).

The copy is checked against the official SDK's response models (SDK_MODELS below, used by
tests/openrouter/test_sdk_conformance.py): a field the SDK has and this list lacks, or the
reverse, fails a test, and so, through shape_errors, does a field the emulator does not send.
"""

from __future__ import annotations

from typing import Any

from openrouter import components, operations

NUMBER = (int, float)
STRING = (str,)
BOOL = (bool,)
NULLABLE_NUMBER = (int, float, type(None))
NULLABLE_STRING = (str, type(None))
INTEGER = (int,)
NULLABLE_INTEGER = (int, type(None))
NULLABLE_BOOL = (bool, type(None))
NULLABLE_OBJECT = (dict, type(None))
LIST = (list,)
NULLABLE_LIST = (list, type(None))

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
    # newer (SDK 1.3.x): every budget layer and the binding one, and the account's context
    "budgets": LIST,
    "effective_budget": NULLABLE_OBJECT,
    "free_model_daily_requests": (dict,),
    "allowed_data_regions": LIST,
    "organization_id": NULLABLE_STRING,
    "workspace_id": NULLABLE_STRING,
}

# GET /key's budgets[] items and effective_budget (the SDK's KeyBudget).
KEY_BUDGET: dict[str, tuple[type, ...]] = {
    "scope": STRING,
    "limit_usd": NUMBER,
    "spend_usd": NUMBER,
    "remaining_usd": NUMBER,
    "reset_interval": NULLABLE_STRING,
    "resets_at": NULLABLE_STRING,
    "include_byok": BOOL,
    "budget_id": NULLABLE_STRING,
    "guardrail_id": NULLABLE_STRING,
}

FREE_MODEL_DAILY_REQUESTS: dict[str, tuple[type, ...]] = {
    "used": INTEGER,
    "limit": INTEGER,
    "remaining": INTEGER,
}

CREDITS: dict[str, tuple[type, ...]] = {"total_credits": NUMBER, "total_usage": NUMBER}

# GET /generation?id= (openrouter-api.md §2.10). Note: no key hash among them.
GENERATION: dict[str, tuple[type, ...]] = {
    "id": STRING,
    "model": STRING,
    "provider_name": NULLABLE_STRING,
    "created_at": STRING,
    "api_type": NULLABLE_STRING,
    "total_cost": NUMBER,
    "usage": NUMBER,
    "upstream_inference_cost": NULLABLE_NUMBER,
    "cache_discount": NULLABLE_NUMBER,
    "is_byok": BOOL,
    "tokens_prompt": NULLABLE_INTEGER,
    "tokens_completion": NULLABLE_INTEGER,
    "native_tokens_prompt": NULLABLE_INTEGER,
    "native_tokens_completion": NULLABLE_INTEGER,
    "native_tokens_reasoning": NULLABLE_INTEGER,
    "native_tokens_cached": NULLABLE_INTEGER,
    "native_tokens_completion_images": NULLABLE_INTEGER,
    "num_media_prompt": NULLABLE_INTEGER,
    "num_media_completion": NULLABLE_INTEGER,
    "num_input_audio_prompt": NULLABLE_INTEGER,
    "num_search_results": NULLABLE_INTEGER,
    "num_fetches": NULLABLE_INTEGER,
    "latency": NULLABLE_NUMBER,
    "generation_time": NULLABLE_NUMBER,
    "moderation_latency": NULLABLE_NUMBER,
    "finish_reason": NULLABLE_STRING,
    "native_finish_reason": NULLABLE_STRING,
    "streamed": NULLABLE_BOOL,
    "cancelled": NULLABLE_BOOL,
    "external_user": NULLABLE_STRING,
    "app_id": NULLABLE_INTEGER,
    "http_referer": NULLABLE_STRING,
    "user_agent": NULLABLE_STRING,
    "origin": STRING,
    "router": NULLABLE_STRING,
    "service_tier": NULLABLE_STRING,
    "preset_id": NULLABLE_STRING,
    "upstream_id": NULLABLE_STRING,
    "web_search_engine": NULLABLE_STRING,
    "provider_responses": NULLABLE_LIST,
    "data_region": STRING,
    "workspace_id": NULLABLE_STRING,
}
# Fields OpenRouter may leave out altogether (the SDK's optional ones): not required of us.
GENERATION_OPTIONAL = frozenset({"request_id", "response_cache_source_id", "session_id"})

# GET /activity's data[] items (openrouter-api.md §2.9): per day, model and endpoint, no key.
ACTIVITY_ITEM: dict[str, tuple[type, ...]] = {
    "date": STRING,
    "model": STRING,
    "model_permaslug": STRING,
    "endpoint_id": STRING,
    "provider_name": STRING,
    "usage": NUMBER,
    "byok_usage_inference": NUMBER,
    "requests": INTEGER,
    "prompt_tokens": INTEGER,
    "completion_tokens": INTEGER,
    "reasoning_tokens": INTEGER,
    "cached_tokens": INTEGER,
}
ACTIVITY_ITEM_OPTIONAL = frozenset({"workspace_id"})  # only with group_by=workspace

# Each documented shape beside the SDK model (openrouter 1.3.x) that reads it, and the fields
# of that model that OpenRouter may omit (documented as optional above, or not at all).
SDK_MODELS: dict[str, tuple[dict[str, tuple[type, ...]], type[Any], frozenset[str]]] = {
    "key object (GET /keys)": (KEY_OBJECT, operations.ListData, frozenset()),
    "key object (POST /keys)": (KEY_OBJECT, operations.CreateKeysData, frozenset()),
    "key object (GET /keys/{hash})": (KEY_OBJECT, operations.GetKeyData, frozenset()),
    "key object (PATCH /keys/{hash})": (KEY_OBJECT, operations.UpdateKeysData, frozenset()),
    "GET /key": (CURRENT_KEY, operations.GetCurrentKeyData, frozenset()),
    "GET /key budgets[]": (KEY_BUDGET, components.KeyBudget, frozenset()),
    "GET /key free_model_daily_requests": (
        FREE_MODEL_DAILY_REQUESTS,
        components.FreeModelDailyRequests,
        frozenset(),
    ),
    "GET /credits": (CREDITS, operations.GetCreditsData, frozenset()),
    "GET /generation": (GENERATION, components.GenerationResponseData, GENERATION_OPTIONAL),
    "GET /activity data[]": (ACTIVITY_ITEM, components.ActivityItem, ACTIVITY_ITEM_OPTIONAL),
}


def sdk_fields(model: type[Any]) -> dict[str, bool]:
    """The JSON names of an SDK model's fields, each with whether the model requires it."""
    return {(info.alias or name): info.is_required() for name, info in model.model_fields.items()}


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
