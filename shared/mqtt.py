"""The one module that imports aiomqtt: a resilient MQTT session both sides build on.

It reconnects with backoff, re-subscribes, drops (and counts) messages on topics it did not
subscribe to (amqtt hands a new client other clients' retained messages), and turns the
library's errors into a boolean from `publish`. agent/link.py and controller/bus.py give it
their topics and handlers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiomqtt

from shared.settings import BrokerTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class LastWill:
    topic: str
    payload: bytes
    retain: bool = True


OnConnect = Callable[[], Awaitable[None]]
OnMessage = Callable[[Inbound], Awaitable[None]]


def topic_matches(topic: str, pattern: str) -> bool:
    return aiomqtt.Topic(topic).matches(pattern)


async def _wait_through_cancels(waits: Iterable[asyncio.Future[Any]], bound: float) -> None:
    """Until one of `waits` is done or `bound` seconds pass, whatever cancels arrive meanwhile:
    for clean-up already on its way out with a CancelledError (a stopping owner cancels again
    after a grace period; the clean-up is bounded, and the CancelledError goes on after it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    pending = set(waits)
    while pending and not any(w.done() for w in pending):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            continue


class _Connection:
    """`async with _Connection(client)`: aiomqtt's `async with client`, safe to cancel.

    aiomqtt 2.x connects in two steps: paho's blocking socket connect in a thread of the
    default executor, then a wait for the broker's CONNACK. Cancelled in either step it gives
    up the wait at once and leaves the connection behind: the thread goes on and may open the
    socket after the cancel; the socket stays registered with the event loop, aiomqtt's
    keepalive task keeps running, and nothing owns either. When the broker (or the keepalive)
    closes that socket later, aiomqtt's callback raises on the cancelled CONNACK future (an
    "Exception in callback" traceback); when the loop is closed first, paho's clean-up of the
    forgotten client says "Event loop is closed" (empicano/aiomqtt#377, open). A connect that
    fails for want of a CONNACK in time leaves its socket open the same way until the keepalive
    notices.

    Here a cancelled connect lets the thread's socket connect return (at most paho's connect
    timeout; it cannot be interrupted, and the process would wait for it at exit anyway), then
    closes the socket, which unregisters it and ends the keepalive task, and only then lets the
    CancelledError go on. A failed connect is closed at once. This needs private parts of
    aiomqtt and paho (the connect step, the paho client and its socket close, the keepalive
    task); tests/unit/test_mqtt_cancel.py fails if a new aiomqtt changes them.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self._paho = client._client
        self._loop = asyncio.get_running_loop()
        self._thread_done = asyncio.Event()
        self._abandoned = False
        blocking_connect = client._client_connect

        def connect_in_thread() -> None:
            # aiomqtt runs this in the executor thread; whatever the thread schedules on the
            # loop (paho's reader, writer, keepalive task) is scheduled before our signal
            try:
                blocking_connect()
            finally:
                self._loop.call_soon_threadsafe(self._on_thread_done)

        client._client_connect = connect_in_thread  # type: ignore[method-assign]

    def _on_thread_done(self) -> None:
        self._thread_done.set()
        if self._abandoned:  # the socket came after the cancel and its bounded wait
            self._close()

    def _close(self) -> None:
        """Close the socket, if the thread opened one (a no-op otherwise, or while the thread
        is still connecting: it is closed when the thread is done)."""
        if self._thread_done.is_set():
            self._paho._sock_close()

    async def __aenter__(self) -> aiomqtt.Client:
        entering = asyncio.ensure_future(self.client.__aenter__())
        try:
            await asyncio.shield(entering)
        except aiomqtt.MqttError:
            self._close()  # no CONNACK in time, or a refusal: not left to the keepalive
            raise
        except asyncio.CancelledError:
            await self._abandon(entering)
            raise
        return self.client

    async def _abandon(self, entering: asyncio.Future[Any]) -> None:
        self._abandoned = True
        thread_done = asyncio.ensure_future(self._thread_done.wait())
        try:
            await _wait_through_cancels([thread_done], self._paho.connect_timeout + 1.0)
        finally:
            thread_done.cancel()
        self._close()
        entering.cancel()
        keepalive = getattr(self.client, "_misc_task", None)
        waits: list[asyncio.Future[Any]] = [entering]
        if isinstance(keepalive, asyncio.Task):
            waits.append(keepalive)
        for wait in waits:
            await _wait_through_cancels([wait], 2.0)
            if wait.done() and not wait.cancelled():
                wait.exception()  # retrieved: the cancel is what ends this connect

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.__aexit__(exc_type, exc, tb)


class MqttSession:
    def __init__(
        self,
        target: BrokerTarget,
        client_id: str,
        subscriptions: list[str],
        on_message: OnMessage,
        on_connect: OnConnect | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
        will: LastWill | None = None,
        keepalive: int = 15,
        max_backoff: float = 5.0,
        tls_ca_file: str | None = None,
    ) -> None:
        self._target = target
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_drop = on_drop
        self._will = will
        self._keepalive = keepalive
        self._max_backoff = max_backoff
        self._tls_ca_file = tls_ca_file
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    def _new_client(self) -> aiomqtt.Client:
        tls_context = None
        if self._target.tls:
            tls_context = ssl.create_default_context(cafile=self._tls_ca_file)
        will = None
        if self._will is not None:
            will = aiomqtt.Will(
                self._will.topic, self._will.payload, qos=1, retain=self._will.retain
            )
        return aiomqtt.Client(
            self._target.host,
            self._target.port,
            username=self._target.username,
            password=self._target.password,
            identifier=self._client_id,
            will=will,
            clean_session=True,
            keepalive=self._keepalive,
            timeout=10,
            tls_context=tls_context,
            logger=logging.getLogger("aiomqtt." + self._client_id),
        )

    async def run(self) -> None:
        """Stay connected until cancelled."""
        delay = 0.2
        last_failure = ""
        while True:
            try:
                async with _Connection(self._new_client()) as client:
                    for pattern in self._subscriptions:
                        await client.subscribe(pattern, qos=1, timeout=10)
                    self._client = client
                    self.connected.set()
                    log.info("mqtt %s: connected to %s", self._client_id, self._target)
                    delay = 0.2
                    if self._on_connect is not None:
                        try:
                            await self._on_connect()
                        except Exception as exc:
                            # e.g. the database is away: start over instead of going quiet
                            log.exception("mqtt %s: on-connect work failed", self._client_id)
                            raise aiomqtt.MqttError(f"on-connect work failed: {exc}") from exc
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                was_connected = self._client is not None
                self._client = None
                self.connected.clear()
                if was_connected and self._on_disconnect is not None:
                    self._on_disconnect()
                reason = str(exc)
                if was_connected:
                    log.warning(
                        "mqtt %s: lost the broker at %s: %s; reconnecting with backoff",
                        self._client_id,
                        self._target,
                        reason,
                    )
                elif reason != last_failure:
                    # said once, plainly; the same failure again only at DEBUG
                    log.warning(
                        "mqtt %s: cannot reach the broker at %s: %s; retrying with backoff "
                        "(up to %gs apart) until it answers",
                        self._client_id,
                        self._target,
                        reason,
                        self._max_backoff,
                    )
                else:
                    log.debug(
                        "mqtt %s: still cannot reach %s: %s", self._client_id, self._target, reason
                    )
                last_failure = "" if was_connected else reason
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._max_backoff)
            finally:
                self._client = None
                self.connected.clear()

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if not any(message.topic.matches(p) for p in self._subscriptions):
            self._drop("foreign_topic", topic)
            return
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        try:
            await self._on_message(Inbound(topic, bytes(payload), bool(message.retain)))
        except Exception:
            # a handler bug must not take the connection down with it
            log.exception("mqtt %s: handler failed on %s", self._client_id, topic)
            self._drop("handler_error", topic)

    def _drop(self, reason: str, topic: str) -> None:
        log.debug("mqtt %s: dropped message on %s (%s)", self._client_id, topic, reason)
        if self._on_drop is not None:
            self._on_drop(reason)

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """QoS 1 publish; False when not connected or the broker did not take it."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=10)
        except aiomqtt.MqttError as exc:
            log.warning("mqtt %s: publish to %s failed: %s", self._client_id, topic, exc)
            return False
        return True


class ControlRequestFailed(Exception):
    """A one-shot request/response over MQTT got no answer (broker away, refused login,
    no reply in time). The message never contains a password."""


async def control_request(
    target: BrokerTarget,
    client_id: str,
    topic: str,
    response_topic: str,
    payload: bytes,
    wait_seconds: float = 10.0,
    tls_ca_file: str | None = None,
) -> bytes:
    """Publish `payload` on `topic` in a connection of its own and return the first message
    on `response_topic` (Mosquitto's $CONTROL API answers this way)."""
    tls_context = ssl.create_default_context(cafile=tls_ca_file) if target.tls else None
    try:
        async with asyncio.timeout(wait_seconds):
            async with _Connection(
                aiomqtt.Client(
                    target.host,
                    target.port,
                    username=target.username,
                    password=target.password,
                    identifier=client_id,
                    clean_session=True,
                    timeout=wait_seconds,
                    tls_context=tls_context,
                    logger=logging.getLogger("aiomqtt." + client_id),
                )
            ) as client:
                await client.subscribe(response_topic, qos=1)
                await client.publish(topic, payload, qos=1)
                async for message in client.messages:
                    if isinstance(message.payload, bytes | bytearray):
                        return bytes(message.payload)
    except TimeoutError:
        raise ControlRequestFailed(
            f"no answer from the broker at {target} in {wait_seconds:g}s"
        ) from None
    except aiomqtt.MqttError as exc:
        raise ControlRequestFailed(f"the broker at {target}: {exc}") from None
    raise ControlRequestFailed(f"the broker at {target} closed the connection")
