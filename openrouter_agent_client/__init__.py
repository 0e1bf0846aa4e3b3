"""Python client of openrouter-agent: revealed keys (cached, single-flight), usage, users and
buffered usage reports. Depends on httpx and pydantic only."""

from openrouter_agent_client.client import DEFAULT_KEY_TTL_S, AgentClient
from openrouter_agent_client.errors import AgentError
from openrouter_agent_client.models import Breakdown, Usage, UsageReport, UserInfo

__all__ = [
    "DEFAULT_KEY_TTL_S",
    "AgentClient",
    "AgentError",
    "Breakdown",
    "Usage",
    "UsageReport",
    "UserInfo",
]
