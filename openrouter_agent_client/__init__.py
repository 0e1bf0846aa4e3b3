"""Python client of openrouter-agent: revealed keys (cached, single-flight), one chat completion
with key, call and report, usage, users and buffered usage reports. Depends on httpx and
pydantic only. AgentClient is async; SyncAgentClient is the same for synchronous code."""

from openrouter_agent_client.client import DEFAULT_KEY_TTL_S, AgentClient
from openrouter_agent_client.errors import (
    AgentError,
    BudgetExhausted,
    DailyCapReached,
    ModelNotAllowed,
    OpenRouterError,
)
from openrouter_agent_client.models import (
    Breakdown,
    BudgetIncrease,
    BudgetIncreaseGranted,
    BudgetLayer,
    Usage,
    UsageReport,
    UserInfo,
)
from openrouter_agent_client.sync import SyncAgentClient

__all__ = [
    "DEFAULT_KEY_TTL_S",
    "AgentClient",
    "AgentError",
    "Breakdown",
    "BudgetExhausted",
    "BudgetIncrease",
    "BudgetIncreaseGranted",
    "BudgetLayer",
    "DailyCapReached",
    "ModelNotAllowed",
    "OpenRouterError",
    "SyncAgentClient",
    "Usage",
    "UsageReport",
    "UserInfo",
]
