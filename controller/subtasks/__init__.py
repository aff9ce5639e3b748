"""The migration's sub-tasks, one module per stage: prepare (1), transfer (2), finish (3).

Each sub-task is ``fn(ctx, deadline) -> facts``: it may be run again after a
crash (its idempotency rule is in the runner's table, controller/runner.py),
and the facts it returns are checkpointed with its ``done`` in one transaction.
"""
