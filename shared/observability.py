"""Structured JSON logging (Powertools Logger): secrets redacted, the request id on every line."""

from __future__ import annotations

import logging
import os
import uuid
from contextvars import ContextVar

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from shared.redaction import redact

SERVICE_NAME = "openrouter-agent"

# The levels LOG_LEVEL may name (any case): logging's own, which uvicorn also knows.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON formatter whose finished line passes through redact().

    Redacting the serialised line, not individual fields, also covers exception tracebacks and
    values passed in `extra`.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RequestIdFilter(logging.Filter):
    """Adds the current request id to each record; Powertools emits extra record attributes."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id.get()
        if request_id is not None:
            record.request_id = request_id
        return True


def _level_at_import() -> str:
    """POWERTOOLS_LOG_LEVEL, else LOG_LEVEL (Powertools' own order), else INFO.

    Powertools would read them itself and raise at import on a misspelt one: every function and
    every command, --help included, would die with a traceback. A value that is no level is
    passed over here; LOG_LEVEL is then refused by name when the settings are read.
    """
    for variable in ("POWERTOOLS_LOG_LEVEL", "LOG_LEVEL"):
        level = os.environ.get(variable, "").strip().upper()
        if level in LOG_LEVELS:
            return level
    return "INFO"


# serialize_stacktrace off: the plain traceback is already in "exception"; the structured copy
# doubled every error line. (With our own formatter, the flag must be given to it.)
logger = Logger(
    service=SERVICE_NAME,
    level=_level_at_import(),
    logger_formatter=RedactingFormatter(serialize_stacktrace=False),
)
logger.addFilter(RequestIdFilter())
# Our lines are complete (JSON, redacted) when our handler writes them. Propagating the raw
# records to the root logger would let any other handler (a platform's, a test runner's) print
# them unredacted.
logging.getLogger(SERVICE_NAME).propagate = False
# These libraries log request URLs and, at DEBUG, whole request bodies: botocore would print a
# system key on its way to Secrets Manager. Our own code logs its calls itself, redacted.
for _chatty in ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)


def configure_logging(level: str) -> None:
    logger.setLevel(level.upper())
