"""The jobs function for AWS Lambda: the HTTP routes (API Gateway) and one plain handler per
scheduled job (EventBridge invokes those directly)."""

from functools import partial

from shared.coldstart import loading

with loading():
    from functions.jobs.index import app
    from shared.jobs import service as jobs
    from shared.jobs.scheduled import scheduled_handler
    from shared.web.lambda_adapter import lambda_handler_for

handler = lambda_handler_for(app)

prune_rate_limits = scheduled_handler(
    "prune_rate_limits", jobs.prune_rate_limits, lambda: app.state.runtime
)

advance_key_operations = scheduled_handler(
    "advance_key_operations", jobs.advance_key_operations, lambda: app.state.runtime
)

reconcile_keys = scheduled_handler("reconcile_keys", jobs.reconcile_keys, lambda: app.state.runtime)

# The work lanes: one handler per lane, each on its own schedule (a handler that checks it is
# a scheduled event gets no input from it). serverless.yml schedules WORK_LANES of them.
work_lane_0 = scheduled_handler(
    "work_lane_0", partial(jobs.work, lane=0), lambda: app.state.runtime
)
work_lane_1 = scheduled_handler(
    "work_lane_1", partial(jobs.work, lane=1), lambda: app.state.runtime
)

rotate_scheduled_keys = scheduled_handler(
    "rotate_scheduled_keys", jobs.rotate_scheduled_keys, lambda: app.state.runtime
)

open_usage_period = scheduled_handler(
    "open_usage_period", jobs.open_usage_period, lambda: app.state.runtime
)

measure_usage_drift = scheduled_handler(
    "measure_usage_drift", jobs.measure_usage_drift, lambda: app.state.runtime
)

sync_usage_from_openrouter = scheduled_handler(
    "sync_usage_from_openrouter", jobs.sync_usage_from_openrouter, lambda: app.state.runtime
)

verify_reported_usage = scheduled_handler(
    "verify_reported_usage", jobs.verify_reported_usage, lambda: app.state.runtime
)

deliver_alerts = scheduled_handler("deliver_alerts", jobs.deliver_alerts, lambda: app.state.runtime)
