"""The controller process: aiohttp API, storage, the MQTT bus, assignment and ingest."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller import api
from controller.alerting.definitions import AlertDefinitions
from controller.api import checkpoints, enrolment
from controller.api.common import CONTROLLER, PRINCIPAL, ApiError, refuse_unstorable_text
from controller.assigner import Assigner
from controller.auth import Authenticator, AuthLimits, TooManyAttempts, ensure_admin
from controller.bus import ControllerBus
from controller.clock import ClockTracker
from controller.db.connect import DatabaseUnusable, open_store
from controller.db.store import ServerRow, Store, StoreUnavailable
from controller.dynsec import BrokerAdmin, LoginRemover
from controller.ingest import Ingest
from controller.integrations import Senders
from controller.metrics import ControllerMetrics
from controller.nolive import NoLiveSlots
from controller.retention import Retention
from controller.settings import ControllerSettings
from shared.messages import Hello, ResultBatch
from shared.settings import parse_broker_url, parse_listen
from shared.signals import stop_event
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

PUBLIC_PATHS = checkpoints.PUBLIC_PATHS | enrolment.PUBLIC_PATHS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Controller:
    """Everything the API handlers and the bus share; also the bus's message handler."""

    def __init__(
        self, settings: ControllerSettings, store: Store, stopping: asyncio.Event | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = ControllerMetrics()
        self.senders = Senders(settings, self.metrics)
        # the alert definitions as alerting reads them, cached (controller/alerting)
        self.alert_definitions = AlertDefinitions(store)
        self.auth = Authenticator(
            store,
            AuthLimits(
                max_password_checks=settings.password_check_limit(),
                cache_seconds=settings.credential_cache_seconds,
                failures_per_user_address=settings.login_failures_per_user_address,
                failures_per_address=settings.login_failures_per_address,
                failure_window_seconds=settings.login_failure_window_seconds,
                throttle_max_entries=settings.login_throttle_max_entries,
            ),
            self.metrics,
        )
        self.bus = ControllerBus(settings.broker_url, self, self.metrics)
        # makes enrolled agents' broker logins; None: enrolment is off
        self.broker_admin = (
            BrokerAdmin(parse_broker_url(settings.broker_admin_url))
            if settings.broker_admin_url
            else None
        )
        # deletes retired agents' broker logins, retrying until done; None: enrolment is off
        self.logins = (
            LoginRemover(
                self.broker_admin,
                lambda outcome, n: self.metrics.login_deletions.labels(outcome).inc(n),
                self.metrics.logins_to_delete.set,
            )
            if self.broker_admin is not None
            else None
        )
        self.assigner = Assigner(
            store,
            self.bus,
            self.metrics,
            activation_seconds=settings.server_activation_seconds,
            require_approval=settings.require_approval,
        )
        self.clock = ClockTracker(self.bus.time_request, self.metrics)
        self.bus.on_clock = self.clock.on_reply
        self.assigner.on_retired = self.clock.forget
        # set by a signal, or when a background loop dies
        self.stopping = stopping or asyncio.Event()
        self.failed = ""  # why, once a background loop has died
        self.ingest = Ingest(
            store,
            self.bus,
            self.assigner,
            self.metrics,
            settings.failed_body_bytes,
            settings.ingest_batch_max,
            settings.ingest_queue_max_bytes,
            settings.ingest_attempts,
            settings.concurrent_wait_seconds,
        )
        self.ingest.clock_offset_ms = self.clock.offset_ms
        # slots of monitors with no live checkpoint, stored as inconclusive
        self.no_live = NoLiveSlots(
            store,
            self.assigner,
            self.metrics,
            self.bus.session.connected.is_set,
            settings.no_live_grace_seconds,
            settings.no_live_rows_per_second,
        )
        self.ingest.no_live = self.no_live
        self.retention = Retention(
            store,
            self.assigner,
            self.metrics,
            settings.result_retention_days,
            settings.retention_batch_rows,
            settings.retention_pause_seconds,
        )

    def background_ended(self, task: asyncio.Task[None]) -> None:
        """A background loop must never end while serving: if one does, stop the process
        (loudly) so a supervisor restarts it, rather than answer the API and store nothing."""
        if task.cancelled() or self.stopping.is_set():
            return
        died = task.exception() or RuntimeError("it returned")
        log.error(
            "controller: background task %s died: %r; stopping",
            task.get_name(),
            died,
            exc_info=died,
        )
        self.failed = f"its {task.get_name()} task died: {died!r}"
        self.stopping.set()

    async def on_connected(self) -> None:
        await self.assigner.sync_all()

    async def on_hello(self, hello: Hello) -> None:
        await self.on_hellos([hello])

    async def on_hellos(
        self, hellos: list[Hello], more: Callable[[], list[Hello]] | None = None
    ) -> None:
        """Hellos that came together (controller/bus.py ControlQueue): each checked against
        its enrolment, then placed in one pass (with those `more` gives while it waits)."""

        async def admitted_more() -> list[tuple[Hello, bool]]:
            return await self._admit(more()) if more is not None else []

        admitted = await self._admit(hellos)
        if not admitted and more is None:
            return
        await self.assigner.on_hellos(admitted, admitted_more)
        await self.ingest.confirmers_changed()  # placement may have moved to them
        self.clock.round_now()

    async def _admit(self, hellos: list[Hello]) -> list[tuple[Hello, bool]]:
        """The hellos to register, each with whether its agent enrolled (a refused one is
        counted and logged, rate-limited)."""
        admitted: list[tuple[Hello, bool]] = []
        for hello in hellos:
            enrolled = await self.store.enrolled(hello.agent)
            if enrolled is not None and (
                hello.checkpoint != enrolled["checkpoint_name"]
                or hello.region != enrolled["region_name"]
            ):
                # the token fixed where this agent measures from: it cannot move itself. Every
                # one is counted; the line is rate-limited (one per agent every 10 s): an agent
                # that keeps saying hello must not flood the log
                self.metrics.hellos_refused.labels("checkpoint").inc()
                suppressed = self.bus.log_limit.allow((hello.agent, "hello:enrolled-checkpoint"))
                if suppressed is not None:
                    log.warning(
                        "hello of agent %s refused: it names checkpoint %r (region %r), but it "
                        "was enrolled for checkpoint %s (region %s) (%d more like it not logged)",
                        hello.agent,
                        hello.checkpoint,
                        hello.region,
                        enrolled["checkpoint_name"],
                        enrolled["region_name"],
                        suppressed,
                    )
                continue
            admitted.append((hello, enrolled is not None))
        return admitted

    async def load_logins_to_delete(self) -> None:
        """Every retired enrolled server's login, to delete (again: one the broker never
        confirmed before a restart is not forgotten; one already gone is no error)."""
        if self.logins is None:
            return
        for srv in list(self.assigner.servers.values()):
            if srv.state == "retired" and await self.store.enrolled(srv.agent_id) is not None:
                self.logins.add(srv.agent_id)

    async def server_retired(self, srv: ServerRow) -> None:
        """A retired agent must not connect any more: its broker login goes, if we made it."""
        if await self.store.enrolled(srv.agent_id) is None:
            self.metrics.login_deletions.labels("by_hand").inc()
            log.info(
                "agent %s (checkpoint %s) retired: it was given its broker credentials by hand, "
                "not enrolled, so Picket has no login of it to delete; remove its login on the "
                "broker to keep it from connecting",
                srv.agent_id,
                srv.checkpoint_name,
            )
            return
        if self.logins is None:
            self.metrics.login_deletions.labels("no_admin").inc()
            log.warning(
                "agent %s (checkpoint %s) retired, but its enrolled broker login cannot be "
                "deleted: PICKET_BROKER_ADMIN_URL is not set; delete login %s on the broker",
                srv.agent_id,
                srv.checkpoint_name,
                srv.agent_id,
            )
            return
        self.logins.add(srv.agent_id)

    async def server_returned(self, srv: ServerRow) -> None:
        """A retired server approved again: its login, if still there, stays."""
        if self.logins is not None and srv.agent_id in self.logins.pending:
            self.logins.discard(srv.agent_id)
        elif await self.store.enrolled(srv.agent_id) is not None:
            log.warning(
                "agent %s (checkpoint %s) approved again after its retirement deleted its broker "
                "login: it cannot connect until it is enrolled again (a new token)",
                srv.agent_id,
                srv.checkpoint_name,
            )

    def online_agents(self) -> list[str]:
        # a retired server's clock is no longer sampled (nor shown)
        return [
            s.agent_id for s in self.assigner.servers.values() if s.online and s.state != "retired"
        ]

    async def on_state(self, agent_id: str, online: bool) -> None:
        await self.assigner.on_state(agent_id, online)
        # a confirmation asked of an agent gone offline is asked of another now
        await self.ingest.confirmers_changed()

    def on_results(
        self, batch: ResultBatch, size: int, rejects: list[tuple[str, str]] | None = None
    ) -> bool:
        return self.ingest.offer(batch, size, rejects)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except TooManyAttempts as exc:  # a login, or a password to hash (Register): pool busy
        response = ApiError(
            429, [(None, f"Try again later: {exc.why}")], {"Retry-After": str(exc.retry_after)}
        ).response()
    except StoreUnavailable:
        # the store logs the outage once; each request is not worth a traceback
        response = ApiError(
            503, [(None, "The database is unavailable; try again later")]
        ).response()
        response.headers["Retry-After"] = "5"
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = ApiError(exc.status, [(None, exc.reason)]).response()
    except RecursionError:
        # a safety net: input is checked for depth where it is parsed (shared/jsonin.py)
        log.exception("API %s %s: deep input got past the checks", request.method, request.path)
        response = ApiError(400, [(None, "The request is nested too deeply")]).response()
    except Exception:
        log.exception("API %s %s failed", request.method, request.path)
        response = ApiError(500, [(None, "Internal server error")]).response()
    metrics = request.app[CONTROLLER].metrics
    route = _route_name(request)
    metrics.api_requests.labels(request.method, route, str(response.status)).inc()
    metrics.api_duration.labels(route).observe(time.perf_counter() - started)
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path == "/metrics" or request.path == "/":
        return await handler(request)
    ctl = request.app[CONTROLLER]
    # TooManyAttempts (429) is answered by errors_and_metrics
    principal = await ctl.auth.authenticate(request.headers.get("Authorization"), request.remote)
    if principal is None:
        raise ApiError(401, [(None, "Valid Basic credentials are required")])
    request[PRINCIPAL] = principal
    return await handler(request)


async def metrics_endpoint(request: web.Request) -> web.Response:
    data = generate_latest(request.app[CONTROLLER].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.Response:
    return web.json_response(
        {"Name": "Picket", "Api": "/api/v4", "Metrics": "/metrics"}, status=200
    )


def _background(ctl: Controller) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await ensure_admin(ctl.store, ctl.settings.data_dir, ctl.settings.admin_password, ctl.auth)
        await ctl.assigner.load()
        await ctl.ingest.load()
        await ctl.load_logins_to_delete()
        tasks = [
            asyncio.create_task(ctl.bus.run(), name="bus"),
            asyncio.create_task(ctl.ingest.run(), name="ingest"),
            asyncio.create_task(ctl.ingest.decide_concurrent_forever(), name="concurrent"),
            asyncio.create_task(ctl.assigner.reconcile_forever(), name="reconcile"),
            asyncio.create_task(ctl.assigner.activate_forever(), name="activate"),
            asyncio.create_task(ctl.no_live.run(), name="no-live"),
            asyncio.create_task(ctl.retention.run(), name="retention"),
            asyncio.create_task(ctl.clock.run(ctl.online_agents), name="clock"),
        ]
        if ctl.logins is not None:
            tasks.append(asyncio.create_task(ctl.logins.run(), name="logins"))
        for task in tasks:
            task.add_done_callback(ctl.background_ended)
        yield
        await cancel_and_wait(tasks)  # a task that died was logged by background_ended

    return ctx


def create_app(ctl: Controller) -> web.Application:
    app = web.Application(middlewares=[errors_and_metrics, authenticate, refuse_unstorable_text])
    app[CONTROLLER] = ctl
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/", index)
    api.setup(app)
    app.cleanup_ctx.append(_background(ctl))

    async def close_auth(_app: web.Application) -> None:
        ctl.auth.close()
        await ctl.senders.close()

    app.on_cleanup.append(close_auth)
    return app


async def serve(settings: ControllerSettings) -> None:
    stop = stop_event()
    try:
        store = await open_store(settings.resolved_database_url(), settings.database_wait_seconds)
    except DatabaseUnusable as exc:
        raise SystemExit(f"controller: {exc}; exiting") from None
    try:
        host, port = parse_listen(settings.api_listen, 8080)
        # the port first: a controller that cannot listen exits before it starts anything
        # (its MQTT session, cancelled while it connects, would outlive the event loop)
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listening = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise SystemExit(f"controller: cannot listen on {settings.api_listen}: {exc}") from None
        ctl = Controller(settings, store, stop)
        runner = web.AppRunner(create_app(ctl), access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, listening).start()
            display = f"[{host}]" if ":" in host else host
            log.info(
                "controller: API on http://%s:%d/api/v4, metrics on http://%s:%d/metrics, "
                "broker %s",
                display,
                port,
                display,
                port,
                parse_broker_url(settings.broker_url),
            )
            await stop.wait()
            log.info("controller: stopping")
        finally:
            await runner.cleanup()
    finally:
        await store.close()
    if ctl.failed:
        raise SystemExit(f"controller: stopped because {ctl.failed} (see above)")
    log.info("controller: stopped")


def main(settings: ControllerSettings) -> None:
    import uvloop

    uvloop.run(serve(settings))
