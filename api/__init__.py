"""The HTTP API and the live operations dashboard (``campaigns api``).

An entry point on top of the layers (beside ``bench``): FastAPI routes over the same
:class:`~campaigns.service.CampaignService` and RBAC as the CLI, API tokens as bearer tokens, RFC 9457 problem
details with the CLI's exit codes, ``Idempotency-Key`` on every POST (PostgreSQL, migration 0009), request size
and per-token rate limits, and a dashboard at ``/`` fed over server-sent events by one shared poller. See
``docs/api.md``.
"""
