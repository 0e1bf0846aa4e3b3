"""AWS Lambda entry for an HTTP app: Mangum behind API Gateway, with Powertools' Lambda context.

Only Lambda modules (functions/<group>/aws.py) import this, so Vercel never imports Mangum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from fastapi import FastAPI
from mangum import Mangum

from shared.observability import logger

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def lambda_handler_for(app: FastAPI) -> LambdaHandler:
    # lifespan="off": Mangum would run the lifespan on every invocation; adapters are lazy instead.
    adapter = Mangum(app, lifespan="off")

    @logger.inject_lambda_context(
        correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True
    )
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return adapter(event, context)

    return handler
