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
    agent_sub = agent.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")
    enrol = agent_sub.add_parser(
        "enrol", help="spend an enrolment token: this agent's own broker login and identity"
    )
    enrol.add_argument("--controller", required=True, metavar="URL", help="the controller's API")
    enrol.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help="the one-time token from POST /api/v4/EnrolmentToken (or PICKET_ENROLMENT_TOKEN)",
    )
    enrol.add_argument(
        "--data-dir",
        dest="enrol_data_dir",
        default=None,
        metavar="DIR",
        help="where the key and identity are kept (default: PICKET_DATA_DIR, or var)",
    )
    return parser


def _enrol(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    from agent.enrol import EnrolFailed, enrol

    token = args.token or os.environ.get("PICKET_ENROLMENT_TOKEN", "")
    if not token:
        raise SystemExit("picket agent enrol: give --token or PICKET_ENROLMENT_TOKEN")
    data_dir = Path(
        args.enrol_data_dir or args.data_dir or os.environ.get("PICKET_DATA_DIR") or "var"
    )
    try:
        identity = enrol(args.controller, token, data_dir)
    except EnrolFailed as exc:
        raise SystemExit(f"picket agent enrol: {exc}") from None
    print(
        f"enrolled as agent {identity['agent_id']} at checkpoint {identity['checkpoint']} "
        f"(region {identity['region']}), broker {identity['broker_url']}; "
        f"identity and key in {data_dir}: run `picket agent` with PICKET_DATA_DIR={data_dir}"
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "controller":
            from controller.app import main as run_controller
            from controller.settings import ControllerSettings

            controller_settings = load(ControllerSettings, args)
            setup(controller_settings.log_level, "controller")
            run_controller(controller_settings)
        elif args.command == "agent" and args.agent_command == "enrol":
            _enrol(args)
        elif args.command == "agent":
            from agent.app import main as run_agent
            from agent.enrol import IdentityUnusable
            from agent.settings import AgentSettings

            try:
                agent_settings = load(AgentSettings, args)
            except IdentityUnusable as exc:
                raise SystemExit(f"picket agent: {exc}") from None
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
