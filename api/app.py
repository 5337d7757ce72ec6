"""The FastAPI application: routes, authentication, limits, problem details, idempotency.

Built by :func:`build_app` (nothing at import). Every ``/v1`` route authenticates ``Authorization: Bearer
<API token>`` with :meth:`CampaignService.authenticate` and acts as the token's principal through the same
service methods (and so the same RBAC, ownership rule and audit rows) as the CLI. Each operation's permission is
in the OpenAPI document as ``x-permission``. Handlers are plain functions: FastAPI runs them in its thread pool,
since the service and its sessions are synchronous.
"""


import asyncio
import html
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import queries
from api.idempotency import KEY_MAX, IdempotencyStore, campaign_id_for, request_hash
from api.limits import CSV_MEDIA_TYPE, LimitsMiddleware
from api.live import LiveFeed
from api.problems import (
    INTERNAL,
    INVALID,
    MALFORMED,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    PROBLEM_JSON,
    UNAVAILABLE,
    Problem,
    problem_for,
    problem_schema,
)
from api.settings import ApiSettings
from campaigns.core.rbac import OPERATION_PERMISSION
from campaigns.errors import AccessRefused, CampaignError, NotFound
from campaigns.settings import Settings
from sinks.customers import import_customer_csv

log = logging.getLogger("campaigns.api")
STATIC = Path(__file__).with_name("static")
API_VERSION = "1.0.0"

# --- models ---------------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Campaign(BaseModel):
    id: uuid.UUID
    name: str
    channel: str
    status: str
    version: int
    start_at: datetime | None
    created_by: str
    total_recipients: int | None
    skipped_recipients: int
    expansion_done: bool
    activated_at: datetime | None
    finished_at: datetime | None
    content_approved_by: str | None
    sms: dict[str, Any] | None = Field(None, description="SMS campaigns, in the create answer: the cost estimate "
                                       "(encoding and segments of the static text, max_sms_segments)")


class Unsubscribed(BaseModel):
    unsubscribed: bool
    channel: str
    changed: bool = Field(description="false when the recipient had already unsubscribed (nothing changed)")


class CampaignListItem(BaseModel):
    id: uuid.UUID
    name: str
    channel: str
    status: str
    version: int
    created_by: str
    created_at: datetime
    start_at: datetime | None
    activated_at: datetime | None
    finished_at: datetime | None
    total_recipients: int | None
    expanded_recipients: int
    expansion_done: bool
    content_approved_by: str | None


class CampaignPage(BaseModel):
    items: list[CampaignListItem]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class Counters(BaseModel):
    sent: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    cancelled: int = 0
    delivered: int = 0
    read: int = 0
    clicked: int = 0
    bounced: int = 0


class CampaignStatus(BaseModel):
    id: uuid.UUID
    name: str
    channel: str
    status: str
    version: int
    start_at: str | None
    created_by: str
    content_approved_by: str | None
    activated_at: str | None
    finished_at: str | None
    total_recipients: int | None
    skipped_recipients: int
    expansion_done: bool
    recipients: dict[str, int] = Field(description="campaign_recipient_log rows by status (the authority)")
    terminal: int
    failures_by_reason: dict[str, int]
    channel_paused: str | None
    sms: dict[str, Any] | None = Field(None, description="SMS campaigns: the cost estimate (segments of the static "
                                       "text x recipients)")
    analytics: Counters = Field(description="campaign_analytics totals (exactly-once outcome counts)")


class ScheduleRequest(Strict):
    at: AwareDatetime | None = Field(None, description="start time with a UTC offset; null: the payload's "
                                                       "start_at, else now")


class Receipts(Strict):
    delivered: int = Field(0, ge=0)
    read: int = Field(0, ge=0)
    clicked: int = Field(0, ge=0)
    bounced: int = Field(0, ge=0)


class TemplateIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    channel: Literal["whatsapp", "sms", "email"]
    body: str = Field(min_length=1, max_length=100_000)
    subject: str | None = Field(None, max_length=1000)
    locale: str = Field("en", min_length=1, max_length=16)
    approve: bool = False


class Template(BaseModel):
    id: int
    name: str
    version: int
    channel: str
    locale: str
    subject: str | None
    body: str
    variables: list[str]
    status: str
    approved_by: str | None
    approved_at: datetime | None
    created_at: datetime


class Items(BaseModel):
    items: list[dict[str, Any]]


class TemplateList(BaseModel):
    items: list[Template]


class Created(BaseModel):
    id: str


class ChannelIn(Strict):
    kind: Literal["whatsapp", "sms", "email"]
    id: str | None = Field(None, min_length=1, max_length=64)
    provider: str = Field("simulator", min_length=1, max_length=64)
    rate_per_s: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000)


class PrincipalIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    role: str = Field(min_length=1, max_length=64)


class Principal(BaseModel):
    name: str
    role: str


class PrincipalList(BaseModel):
    items: list[Principal]


class TokenIn(Strict):
    principal: str = Field(min_length=1, max_length=128)
    expires_in_s: int | None = Field(None, ge=60, le=10 * 365 * 86400)


class TokenCreated(BaseModel):
    id: str
    principal: str
    token: str | None = Field(description="the token, shown once (null when an Idempotency-Key replays the "
                                          "answer: the secret is never stored)")


class Revoked(BaseModel):
    revoked: list[str]


class RedriveIn(Strict):
    campaign: uuid.UUID | None = None
    reason: str | None = Field(None, max_length=128)
    rate_per_s: float | None = Field(None, gt=0)
    dry_run: bool = False


class RedriveReport(BaseModel):
    read: int
    re_driven: int
    dry_run: bool


class Me(BaseModel):
    principal: str
    permissions: list[str]


class Accepted(BaseModel):
    accepted: bool


class ImportResult(BaseModel):
    kind: Literal["customers"]
    rows: int
    inserted: int
    updated: int
    unchanged: int


def _view(view: Any) -> dict[str, Any]:
    return asdict(view)


# --- the app --------------------------------------------------------------------------------------


def build_app(settings: Settings, api: ApiSettings) -> FastAPI:
    from campaigns.db.engine import make_engine, make_sessionmaker
    from campaigns.service import CampaignService

    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    service = CampaignService(sessions)
    store = IdempotencyStore(sessions, ttl_s=api.idempotency_ttl_s, stale_s=api.idempotency_stale_s)
    feed = LiveFeed(sessions, settings, interval_s=api.poll_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(feed.close)
            engine.dispose()

    app = FastAPI(
        title="campaigns API", version=API_VERSION, lifespan=lifespan, openapi_url="/openapi.json",
        docs_url="/docs", redoc_url=None,
        description=(
            "Campaigns, templates, channels, principals and tokens, the audit log and dead letters of the campaigns "
            "pipeline, over the same CampaignService and RBAC as the `campaigns` CLI. Authenticate with an API "
            "token (`campaigns token create NAME`) as `Authorization: Bearer <token>`. Errors are RFC 9457 problem "
            "details (`application/problem+json`) whose `exit_code` is what the CLI exits with for the same error. "
            "Every POST honours `Idempotency-Key`. Each operation's permission is its `x-permission`."),
    )
    app.state.feed = feed
    app.state.service = service
    app.add_middleware(LimitsMiddleware, api=api)
    bearer = HTTPBearer(auto_error=False, description="an API token: `campaigns token create NAME`")

    # --- errors -----------------------------------------------------------------------------------

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(CampaignError)
    async def on_campaign_error(request: Request, exc: CampaignError) -> JSONResponse:
        return problem_for(exc).response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return Problem(MALFORMED, "the request body is not well-formed JSON").response(request.url.path)
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                    for e in errors]
        return Problem(INVALID, "invalid input: " + "; ".join(problems), errors=problems).response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}.get(exc.status_code)
        if kind is None:
            problem = Problem(INTERNAL, str(exc.detail))
            body = problem.body(request.url.path) | {"status": exc.status_code}
            return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON)
        detail = f"no route {request.url.path}" if exc.status_code == 404 else \
            f"{request.method} is not allowed on {request.url.path}"
        return Problem(kind, detail).response(request.url.path)

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("service unavailable on %s %s: %s", request.method, request.url.path,
                    str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__)
        return Problem(UNAVAILABLE, "PostgreSQL or Kafka cannot be reached; retry later",
                       headers={"Retry-After": "5"}).response(request.url.path)

    for unavailable in _unavailable_errors():  # handled here, so no traceback: an outage is not a bug
        app.add_exception_handler(unavailable, on_unavailable)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return Problem(INTERNAL, "unexpected error (logged by the server)").response(request.url.path)

    # --- authentication, idempotency ---------------------------------------------------------------

    def actor(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        if credentials is None:
            raise AccessRefused("no API token: send `Authorization: Bearer <token>` with a token an admin created "
                                "for you (`campaigns token create NAME`)")
        return service.authenticate(credentials.credentials)

    Actor = Annotated[str, Depends(actor)]
    IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=KEY_MAX, min_length=1,
                                           description="retries with the same key and request get the first "
                                                       "answer; the operation runs once")]

    def post(request: Request, principal: str, key: str | None, status: int,
             run: Callable[[], Any], *, stored: Callable[[Any], Any] | None = None,
             location: Callable[[Any], str] | None = None) -> JSONResponse:
        """Run a POST once per (principal, Idempotency-Key); answers are stored and replayed."""
        now = datetime.now(UTC)
        digest = None
        if key is not None:
            digest = request_hash(request.method, request.url.path, getattr(request.state, "raw_body", b""))
            begun = store.begin(principal, key, request.method, request.url.path, digest, now)
            if begun.outcome == "replay":
                media = PROBLEM_JSON if begun.status and begun.status >= 400 else "application/json"
                return JSONResponse(begun.response, status_code=begun.status or 200, media_type=media,
                                    headers={"Idempotency-Replayed": "true"})
            if begun.outcome == "reused":
                from api.problems import IDEMPOTENCY_REUSED
                raise Problem(IDEMPOTENCY_REUSED, f"Idempotency-Key {key!r} was first used with a different "
                                                  "request (method, path or body); use a new key")
            if begun.outcome == "in_progress":
                from api.problems import IDEMPOTENCY_IN_PROGRESS
                raise Problem(IDEMPOTENCY_IN_PROGRESS, f"a request with Idempotency-Key {key!r} is still in "
                                                       "progress; retry in a moment", headers={"Retry-After": "1"})
        try:
            result = jsonable_encoder(run())
        except BaseException:
            if key is not None:
                store.abandon(principal, key)
            raise
        if key is not None:
            store.finish(principal, key, status, stored(result) if stored else result, datetime.now(UTC))
        headers = {"Location": location(result)} if location else None
        return JSONResponse(result, status_code=status, headers=headers)

    def require(principal: str, operation: str) -> None:
        service.authorize(principal, operation)

    # --- OpenAPI helpers ---------------------------------------------------------------------------

    def doc(operation: str | None, *errors: int, post_body: bool = False) -> dict[str, Any]:
        codes = sorted({401, 429, 503, *errors, *((400, 413, 415, 422) if post_body else ())}
                       | ({403} if operation else set()))
        return {
            "responses": {code: {"description": _DESCRIPTIONS[code], "model": None,
                                 "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                          for code in codes},
            "openapi_extra": {"x-permission": OPERATION_PERMISSION[operation].value} if operation else {},
        }

    CampaignId = Annotated[uuid.UUID, PathParam(description="a campaign id")]

    # --- campaigns ----------------------------------------------------------------------------------

    @app.get("/v1/me", response_model=Me, tags=["principals"], summary="who the token belongs to",
             **doc(None))
    def me(principal: Actor) -> Me:
        return Me(principal=principal, permissions=sorted(p.value for p in service.permissions(principal) or ()))

    @app.get("/v1/campaigns", response_model=CampaignPage, tags=["campaigns"], summary="list campaigns",
             description="Newest first; keyset pagination: pass `next_cursor` back as `cursor`.",
             **doc("get_campaign", 422))
    def list_campaigns(
        principal: Actor,
        status: Annotated[list[Literal["draft", "scheduled", "active", "paused", "completed", "failed",
                                       "cancelled"]] | None, Query(description="any of these states")] = None,
        channel: Annotated[Literal["whatsapp", "sms", "email"] | None, Query()] = None,
        created_by: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> dict[str, Any]:
        require(principal, "get_campaign")
        items, next_cursor = queries.list_campaigns(sessions, statuses=status or (), channel=channel,
                                                    created_by=created_by, limit=limit, cursor=cursor)
        return {"items": items, "next_cursor": next_cursor}

    create_doc = doc("create_campaign", post_body=True)
    create_doc["openapi_extra"]["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/CampaignPayload"}}}}

    @app.post("/v1/campaigns", response_model=Campaign, status_code=201, tags=["campaigns"],
              summary="create a draft campaign",
              description="The body is the create payload of `docs/campaign-payload.schema.json` (as `campaigns "
                          "create`; the service's validator is authoritative). With an Idempotency-Key, retries "
                          "make one campaign.",
              **create_doc)
    def create_campaign(request: Request, principal: Actor,
                        payload: Annotated[dict[str, Any], Body(description="the create payload")],
                        key: IdemKey = None) -> JSONResponse:
        def run() -> dict[str, Any]:
            campaign_id = campaign_id_for(principal, key) if key else None
            if campaign_id is not None:
                try:  # a re-run after a crash: the first run's campaign
                    existing = service.get_campaign(principal, campaign_id)
                    if existing.created_by == principal:
                        return _view(existing)
                except NotFound:
                    pass
            created = service.create_campaign(principal, payload, campaign_id=campaign_id)
            view = _view(service.get_campaign(principal, created))
            estimate = service.content_estimate(principal, created)
            return view if estimate is None else {**view, "sms": estimate}

        return post(request, principal, key, 201, run, location=lambda c: f"/v1/campaigns/{c['id']}")

    @app.get("/v1/campaigns/{campaign_id}", response_model=Campaign, tags=["campaigns"], summary="a campaign",
             **doc("get_campaign", 404, 422))
    def get_campaign(principal: Actor, campaign_id: CampaignId) -> dict[str, Any]:
        return _view(service.get_campaign(principal, campaign_id))

    @app.get("/v1/campaigns/{campaign_id}/status", response_model=CampaignStatus, tags=["campaigns"],
             summary="state and live counts", description="Recipient-log rows by status (the authority) and the "
             "exactly-once analytics totals.", **doc("campaign_status", 404, 422))
    def campaign_status(principal: Actor, campaign_id: CampaignId) -> dict[str, Any]:
        status = service.campaign_status(principal, campaign_id).as_dict()
        with sessions() as session:
            totals = queries.analytics_totals(session, [campaign_id]).get(str(campaign_id), {})
        return status | {"analytics": {c: totals.get(c, 0) for c in queries.COUNTERS}}

    @app.post("/v1/campaigns/{campaign_id}/schedule", response_model=Campaign, tags=["campaigns"],
              summary="schedule a campaign", **doc("schedule_campaign", 404, 409, post_body=True))
    def schedule(request: Request, principal: Actor, campaign_id: CampaignId,
                 body: ScheduleRequest | None = None, key: IdemKey = None) -> JSONResponse:
        def run() -> dict[str, Any]:
            service.schedule_campaign(principal, campaign_id, body.at if body else None)
            return _view(service.get_campaign(principal, campaign_id))

        return post(request, principal, key, 200, run)

    def transition(action: str) -> Callable[..., JSONResponse]:
        method = getattr(service, f"{action}_campaign")

        def handler(request: Request, principal: Actor, campaign_id: CampaignId, key: IdemKey = None) -> JSONResponse:
            def run() -> dict[str, Any]:
                method(principal, campaign_id)
                return _view(service.get_campaign(principal, campaign_id))

            return post(request, principal, key, 200, run)

        handler.__name__ = f"{action}_campaign"
        return handler

    for action in ("pause", "resume", "cancel"):
        app.post(f"/v1/campaigns/{{campaign_id}}/{action}", response_model=Campaign, tags=["campaigns"],
                 summary=f"{action} a campaign", **doc(f"{action}_campaign", 404, 409))(transition(action))

    @app.post("/v1/campaigns/{campaign_id}/approve", response_model=Campaign, tags=["campaigns"],
              summary="approve a campaign's inline content", **doc("approve_content", 404, 409))
    def approve_content(request: Request, principal: Actor, campaign_id: CampaignId,
                        key: IdemKey = None) -> JSONResponse:
        def run() -> dict[str, Any]:
            service.approve_content(principal, campaign_id)
            return _view(service.get_campaign(principal, campaign_id))

        return post(request, principal, key, 200, run)

    @app.post("/v1/campaigns/{campaign_id}/receipts", response_model=Accepted, status_code=202,
              tags=["campaigns"], summary="delivery receipts (metrics)",
              description="Counts of delivered/read/clicked/bounced receipts; they reach campaign_analytics through "
                          "the outbox, exactly once per call (once per Idempotency-Key).",
              **doc("update_metrics", 404, post_body=True))
    def receipts(request: Request, principal: Actor, campaign_id: CampaignId,
                 body: Receipts, key: IdemKey = None) -> JSONResponse:
        def run() -> dict[str, Any]:
            service.update_metrics(principal, campaign_id, body.model_dump())
            return {"accepted": True}

        return post(request, principal, key, 202, run)

    # --- customers ----------------------------------------------------------------------------------

    import_doc = doc("import_customers", post_body=True)
    del import_doc["responses"][400]  # the body is CSV, never parsed as JSON: problems in it are 422
    import_doc["openapi_extra"]["requestBody"] = {"required": True, "content": {CSV_MEDIA_TYPE: {
        "schema": {"type": "string", "description": "a customer CSV, as `campaigns import customers` reads"}}}}

    @app.post("/v1/customers/import", response_model=ImportResult, tags=["customers"],
              summary="import customers from CSV (upsert by external_id; all or nothing)",
              description="The body is a customer CSV (`text/csv`, UTF-8; columns and rules in docs/import.md), at "
                          "most the API's body limit (larger files: `campaigns import customers`). Any bad row: "
                          "422 with every problem as `line N: column: problem` in `errors`, nothing imported. With "
                          "an Idempotency-Key, retries import once.",
              **import_doc)
    def import_customers(request: Request, principal: Actor, key: IdemKey = None) -> JSONResponse:
        raw: bytes = getattr(request.state, "raw_body", b"")

        def run() -> dict[str, Any]:
            lines = io.StringIO(raw.decode("utf-8-sig", errors="replace"), newline="")
            _, counts = service.run_import(principal, "import_customers", lambda cur: import_customer_csv(cur, lines),
                                           lambda c: {**c.as_dict(), "via": "api"})
            assert counts is not None
            return counts.as_dict()

        return post(request, principal, key, 200, run)

    # --- templates ----------------------------------------------------------------------------------

    @app.get("/v1/templates", response_model=TemplateList, tags=["templates"], summary="list templates",
             **doc("get_campaign", 422))
    def list_templates(principal: Actor,
                       channel: Annotated[Literal["whatsapp", "sms", "email"] | None, Query()] = None,
                       status: Annotated[Literal["draft", "pending", "approved", "rejected"] | None,
                                         Query()] = None) -> dict[str, Any]:
        require(principal, "get_campaign")
        return {"items": queries.list_templates(sessions, channel=channel, status=status)}

    @app.post("/v1/templates", response_model=Created, status_code=201, tags=["templates"],
              summary="add a template version", **doc("add_template", post_body=True))
    def add_template(request: Request, principal: Actor, body: TemplateIn, key: IdemKey = None) -> JSONResponse:
        def run() -> dict[str, Any]:
            if body.approve:
                require(principal, "approve_template")
            template_id = service.add_template(principal, name=body.name, channel=body.channel, body=body.body,
                                               subject=body.subject, locale=body.locale, approve=body.approve)
            return {"id": str(template_id)}

        return post(request, principal, key, 201, run)

    @app.post("/v1/templates/{template_id}/approve", response_model=Accepted, tags=["templates"],
              summary="approve a pending template version", **doc("approve_template", 404, 422))
    def approve_template(request: Request, principal: Actor,
                         template_id: Annotated[int, PathParam(ge=1, le=2**63 - 1)],
                         key: IdemKey = None) -> JSONResponse:
        def run() -> dict[str, Any]:
            service.approve_template(principal, template_id)
            return {"accepted": True}

        return post(request, principal, key, 200, run)

    # --- channels -----------------------------------------------------------------------------------

    @app.get("/v1/channels", response_model=Items, tags=["channels"], summary="channel accounts and breakers",
             **doc("list_channels"))
    def list_channels(principal: Actor) -> dict[str, Any]:
        return {"items": service.list_channels(principal)}

    @app.post("/v1/channels", response_model=Created, tags=["channels"], summary="add or update a channel",
              **doc("add_channel", post_body=True))
    def add_channel(request: Request, principal: Actor, body: ChannelIn, key: IdemKey = None) -> JSONResponse:
        return post(request, principal, key, 200, lambda: {"id": service.add_channel(
            principal, kind=body.kind, channel_id=body.id, provider=body.provider, rate_per_s=body.rate_per_s,
            burst=body.burst)})

    @app.post("/v1/channels/{kind}/close", response_model=Created, tags=["channels"],
              summary="close a channel's breaker", **doc("close_channel", 404, 422))
    def close_channel(request: Request, principal: Actor, kind: Literal["whatsapp", "sms", "email"],
                      key: IdemKey = None) -> JSONResponse:
        return post(request, principal, key, 200, lambda: {"id": service.close_channel(principal, kind)})

    # --- principals and tokens ----------------------------------------------------------------------

    @app.get("/v1/principals", response_model=PrincipalList, tags=["principals"], summary="principals",
             **doc("list_principals"))
    def list_principals(principal: Actor) -> dict[str, Any]:
        return {"items": [{"name": n, "role": r} for n, r in service.list_principals(principal)]}

    @app.post("/v1/principals", response_model=Principal, status_code=201, tags=["principals"],
              summary="add a principal or change its role", **doc("add_principal", post_body=True))
    def add_principal(request: Request, principal: Actor, body: PrincipalIn, key: IdemKey = None) -> JSONResponse:
        def run() -> dict[str, Any]:
            service.add_principal(principal, body.name, body.role)
            return {"name": body.name, "role": body.role}

        return post(request, principal, key, 201, run)

    @app.get("/v1/tokens", response_model=Items, tags=["principals"], summary="API tokens (never a secret)",
             **doc("list_tokens"))
    def list_tokens(principal: Actor,
                    of: Annotated[str | None, Query(alias="principal", max_length=128)] = None) -> dict[str, Any]:
        return {"items": service.list_tokens(principal, of)}

    @app.post("/v1/tokens", response_model=TokenCreated, status_code=201, tags=["principals"],
              summary="create an API token (shown once)", **doc("create_token", 404, post_body=True))
    def create_token(request: Request, principal: Actor, body: TokenIn, key: IdemKey = None) -> JSONResponse:
        expires = timedelta(seconds=body.expires_in_s) if body.expires_in_s else None

        def run() -> dict[str, Any]:
            token_id, token = service.create_token(principal, body.principal, expires_in=expires)
            return {"id": token_id, "principal": body.principal, "token": token}

        return post(request, principal, key, 201, run, stored=lambda r: {**r, "token": None})

    @app.post("/v1/tokens/{token_id}/revoke", response_model=Revoked, tags=["principals"],
              summary="revoke a token", description="A principal may revoke its own tokens; anyone else's needs "
              "principals.manage.", **doc("revoke_token", 404, 422))
    def revoke_token(request: Request, principal: Actor,
                     token_id: Annotated[str, PathParam(pattern="^[0-9a-f]{16}$")],
                     key: IdemKey = None) -> JSONResponse:
        return post(request, principal, key, 200,
                    lambda: {"revoked": service.revoke_tokens(principal, token_id=token_id)})

    # --- audit, dead letters --------------------------------------------------------------------------

    @app.get("/v1/audit", response_model=Items, tags=["audit"], summary="the audit log, oldest first",
             **doc("read_audit_log", 422))
    def audit(principal: Actor, campaign: Annotated[uuid.UUID | None, Query()] = None,
              of: Annotated[str | None, Query(alias="principal", max_length=128)] = None,
              since: Annotated[AwareDatetime | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
        return {"items": service.audit_log(principal, campaign_id=campaign, principal=of, since=since, limit=limit)}

    @app.get("/v1/dead-letters", response_model=Items, tags=["dead letters"],
             summary="dead letters of campaign.messages.dlq", **doc("list_dead_letters", 422))
    def dead_letters(principal: Actor, campaign: Annotated[uuid.UUID | None, Query()] = None,
                     reason: Annotated[str | None, Query(max_length=128, description="reason prefix")] = None,
                     limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict[str, Any]:
        from producers.operate import dead_letters as read

        require(principal, "list_dead_letters")
        records = read(settings, campaign=str(campaign) if campaign else None, reason=reason)
        return {"items": [{k: v for k, v in r.items() if k != "original_value"} for r in records[-limit:]]}

    @app.post("/v1/dead-letters/redrive", response_model=RedriveReport, tags=["dead letters"],
              summary="re-produce dead letters to their source topics (audited)",
              **doc("redrive_dead_letters", post_body=True))
    def redrive(request: Request, principal: Actor, body: RedriveIn, key: IdemKey = None) -> JSONResponse:
        from producers.operate import redrive as run_redrive

        def run() -> dict[str, Any]:
            require(principal, "redrive_dead_letters")
            campaign = str(body.campaign) if body.campaign else None
            report = run_redrive(settings, campaign=campaign, reason=body.reason, rate_per_s=body.rate_per_s,
                                 dry_run=body.dry_run)
            if not body.dry_run:
                service.record(principal, "redrive_dead_letters", {"campaign": campaign, "reason": body.reason,
                                                                   "read": report.read, "re_driven": report.matched,
                                                                   "via": "api"})
            return {"read": report.read, "re_driven": report.matched, "dry_run": body.dry_run}

        return post(request, principal, key, 200, run)

    # --- live: server-sent events ---------------------------------------------------------------------

    sse_doc: dict[int | str, dict[str, Any]] = {
        "200": {"description": "text/event-stream of JSON snapshots (`event: snapshot`)",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}}}

    async def sse(request: Request, snapshots: AsyncIterator[dict[str, Any]],
                  operation: str = "get_campaign") -> AsyncIterator[bytes]:
        """Snapshots as server-sent events. The token is checked again every ``stream_recheck_s``: a stream ends
        (``event: end`` with the problem) once its token is revoked or expired or its principal loses the
        permission, and the page's reconnect then meets the 401 or 403."""
        token = (request.headers.get("authorization") or "").partition(" ")[2].strip()

        def recheck() -> None:
            require(service.authenticate(token), operation)

        yield b": connected\n\nretry: 2000\n\n"
        iterator = snapshots.__aiter__()
        checked = time.monotonic()
        try:
            while not await request.is_disconnected():
                if time.monotonic() - checked >= api.stream_recheck_s:
                    checked = time.monotonic()
                    try:
                        await run_in_threadpool(recheck)
                    except CampaignError as error:
                        problem = problem_for(error).body(request.url.path)
                        yield b"event: end\ndata: " + json.dumps(problem).encode() + b"\n\n"
                        return
                    except _unavailable_errors():
                        log.warning("cannot re-check a stream's token (database unavailable); checking later")
                try:
                    snapshot = await asyncio.wait_for(iterator.__anext__(), timeout=15)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield b"event: snapshot\ndata: " + json.dumps(snapshot, default=str).encode() + b"\n\n"
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]

    @app.get("/v1/stream/campaigns", tags=["live"], summary="live campaign list (server-sent events)",
             response_class=StreamingResponse, responses={**sse_doc, **doc("get_campaign")["responses"]},
             openapi_extra={"x-permission": OPERATION_PERMISSION["get_campaign"].value})
    async def stream_campaigns(request: Request, principal: Actor) -> StreamingResponse:
        await run_in_threadpool(require, principal, "get_campaign")
        return StreamingResponse(sse(request, feed.subscribe()), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/v1/stream/campaigns/{campaign_id}", tags=["live"],
             summary="one campaign's counts and windows (server-sent events)", response_class=StreamingResponse,
             responses={**sse_doc, **doc("get_campaign", 404, 422)["responses"]},
             openapi_extra={"x-permission": OPERATION_PERMISSION["get_campaign"].value})
    async def stream_campaign(request: Request, principal: Actor, campaign_id: CampaignId) -> StreamingResponse:
        await run_in_threadpool(service.get_campaign, principal, campaign_id)
        return StreamingResponse(sse(request, feed.subscribe(campaign_id)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # --- the dashboard and health ---------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/campaigns/{campaign_id}", include_in_schema=False)
    def campaign_page(campaign_id: uuid.UUID) -> FileResponse:
        return FileResponse(STATIC / "campaign.html", headers=PAGE_HEADERS)

    # --- one-click unsubscribe (RFC 8058): the link's token is the credential, no bearer token -------------

    unsubscribe_doc = {code: {"description": text, "model": None} for code, text in (
        (403, "the token is not valid (altered, or signed with another key) (`permission-denied`, 3)"),
        (404, "the token's customer no longer exists (`not-found`, 4)"),
        (413, _DESCRIPTIONS[413]), (422, "no token (`invalid-input`, 2)"),
        (429, "more requests than the client's rate limit (`rate-limited`; Retry-After)"), (503, _DESCRIPTIONS[503]))}

    @app.post("/unsubscribe", response_model=Unsubscribed, tags=["unsubscribe"],
              summary="one-click unsubscribe (RFC 8058 List-Unsubscribe-Post)",
              description="What a mail client POSTs (body `List-Unsubscribe=One-Click`, any content type) to the "
                          "https URI of a message's `List-Unsubscribe` header. The `token` (per recipient, HMAC-signed "
                          "by the sender) is the only credential: the recipient is opted out of the token's channel "
                          "and the address suppressed (reason `unsubscribe`). Repeating it is harmless.",
              responses=unsubscribe_doc, openapi_extra={"security": []})
    def unsubscribe(token: Annotated[str, Query(min_length=1, max_length=200,
                                                description="the token of the message's List-Unsubscribe URI")]
                    ) -> dict[str, Any]:
        return service.unsubscribe(token, settings.unsubscribe.secret_bytes())

    @app.get("/unsubscribe", include_in_schema=False)
    def unsubscribe_page(token: Annotated[str, Query(max_length=200)] = "") -> HTMLResponse:
        # A GET must not unsubscribe (link scanners follow links, RFC 8058 section 3.2): it asks for a POST.
        action = html.escape(f"/unsubscribe?token={quote(token)}", quote=True)
        return HTMLResponse(
            "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
            f'<form method=post action="{action}"><p>Stop receiving these messages?</p>'
            "<button type=submit>Unsubscribe</button></form>", headers=PAGE_HEADERS)

    @app.get("/healthz", tags=["health"], summary="liveness (no service is touched)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = problem_schema()
            schema["components"]["schemas"]["CampaignPayload"] = payload_schema()
            problem_content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
            for operations in schema["paths"].values():
                for op in operations.values():
                    for code, answer in op["responses"].items():
                        if int(code) >= 400:  # FastAPI's own 422 (HTTPValidationError) is a problem here too
                            answer["content"] = problem_content
            for schemas in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(schemas, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# The pages run only their own scripts (no inline script, nothing from elsewhere), cannot be framed, and send no
# referrer; data is inserted as text (textContent), never as HTML.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_DESCRIPTIONS = {
    400: "malformed JSON (problem `malformed-request`, exit code 2)",
    401: "no, or an invalid, expired or revoked API token (`unauthenticated`, 3)",
    403: "the principal lacks the permission (`permission-denied`, 3)",
    404: "not found (`not-found`, 4)",
    409: "the state machine refuses the transition (`transition-not-allowed`, 4)",
    413: "the body is larger than CAMPAIGNS_API__MAX_BODY_BYTES (`request-too-large`, 2)",
    415: "the body is not application/json (`unsupported-media-type`, 2)",
    422: "invalid input, or an Idempotency-Key reused with another request (`invalid-input`, 2)",
    429: "more requests than the token's rate limit (`rate-limited`; Retry-After)",
    503: "PostgreSQL or Kafka cannot be reached (`service-unavailable`, 5)",
}


def payload_schema() -> dict[str, Any]:
    """The create payload's JSON Schema (a copy of docs/campaign-payload.schema.json shipped with the package; a
    test keeps the two equal), without the keywords that only a standalone document has."""
    text = resources.files("api").joinpath("campaign-payload.schema.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if k not in ("$schema", "$id")}


def _unavailable_errors() -> tuple[type[Exception], ...]:
    import psycopg2
    from confluent_kafka import KafkaException
    from sqlalchemy.exc import InterfaceError, OperationalError

    return (OperationalError, InterfaceError, psycopg2.OperationalError, KafkaException)
