"""The health function for AWS Lambda behind API Gateway (HTTP API, payload 2.0)."""

from shared.coldstart import loading

with loading():
    from functions.health.index import app
    from shared.web.lambda_adapter import lambda_handler_for

handler = lambda_handler_for(app)
