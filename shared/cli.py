"""`picket up | controller | agent`: each side is imported only when it runs, so an
agent-only install (extra `agent`) never needs the controller's libraries."""

from __future__ import annotations

import argparse
import sys

from shared import __version__
from shared.logs import setup
from shared.settings import add_flags, load


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="picket", description="Picket synthetic monitoring")
    parser.add_argument("--version", action="version", version=f"picket {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="broker + controller + one local agent, for one host")
    controller = sub.add_parser("controller", help="the API, storage, assignment and ingest")
    agent = sub.add_parser("agent", help="run checks for a checkpoint")
    from shared.up import UpSettings

    add_flags(up, UpSettings)
    try:
        from controller.settings import ControllerSettings

        add_flags(controller, ControllerSettings)
    except ImportError:  # pragma: no cover - agent-only install
        pass
    from agent.settings import AgentSettings

    add_flags(agent, AgentSettings)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "controller":
            from controller.app import main as run_controller
            from controller.settings import ControllerSettings

            controller_settings = load(ControllerSettings, args)
            setup(controller_settings.log_level, "controller")
            run_controller(controller_settings)
        elif args.command == "agent":
            from agent.app import main as run_agent
            from agent.settings import AgentSettings

            agent_settings = load(AgentSettings, args)
            setup(agent_settings.log_level, "agent")
            run_agent(agent_settings)
        else:
            from shared.up import UpSettings
            from shared.up import main as run_up

            up_settings = load(UpSettings, args)
            setup(up_settings.log_level, "up")
            sys.exit(run_up(up_settings))
    except KeyboardInterrupt:  # a signal before the handlers were installed: stop quietly
        sys.exit(130)


if __name__ == "__main__":
    main()
