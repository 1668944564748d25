"""amqtt as `picket up`'s broker where no mosquitto binary is installed. Single host only:
amqtt 0.12.1 hands a connecting client other clients' retained messages (our clients filter
them) and can kill a session on concurrent (un)subscribes (our clients reconnect)."""

from __future__ import annotations

import asyncio
import logging
import sys

from shared.logs import setup
from shared.settings import parse_listen
from shared.signals import stop_event

log = logging.getLogger("picket.broker")


async def serve(listen: str) -> None:
    from amqtt.broker import Broker

    host, port = parse_listen(listen, 18830)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    config = {
        "listeners": {"default": {"type": "tcp", "bind": bind, "max_connections": 1000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    stop = stop_event()
    broker = Broker(config)
    await broker.start()
    log.info("amqtt broker listening on %s", bind)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    setup("INFO", "broker")
    asyncio.run(serve(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:18830"))


if __name__ == "__main__":
    main()
