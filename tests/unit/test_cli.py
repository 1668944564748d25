"""The command line speaks plainly: a version, and one line per setting in `--help`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import shared
from agent.settings import AgentSettings
from controller.settings import ControllerSettings
from shared.settings import DESCRIPTIONS, parse_broker_url
from shared.up import UpSettings
from tests.helpers import REPO


def picket(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    result = picket("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"picket {shared.__version__}"


@pytest.mark.parametrize(
    ("command", "settings"),
    [("controller", ControllerSettings), ("agent", AgentSettings), ("up", UpSettings)],
)
def test_help_describes_every_setting(command: str, settings: type[object]) -> None:
    result = picket(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "PydanticUndefined" not in text
    # argparse wraps; join the lines of each option's entry
    entries = re.split(r"\n  (?=--)", re.sub(r"\n {10,}", " ", text))
    flags = {e.split()[0]: e for e in entries if e.startswith("--")}
    for name in settings.model_fields:  # type: ignore[attr-defined]
        entry = flags["--" + name.replace("_", "-")]
        env = f"PICKET_{name.upper()}"
        description = entry.split("VALUE", 1)[1].split("[env", 1)[0].strip()
        assert len(description) > 10, entry  # says what it is, not only its name
        assert f"[env {env}, default: " in entry, entry
    assert "default: none]" in flags["--admin-password" if command != "agent" else "--ca-file"]


def test_every_setting_has_a_description() -> None:
    """A new setting must say what it is (here or in its Field's description)."""
    for settings in (ControllerSettings, AgentSettings, UpSettings):
        for name, field in settings.model_fields.items():
            assert field.description or DESCRIPTIONS.get(name), name


def test_broker_url_shown_without_its_password() -> None:
    assert str(parse_broker_url("mqtts://agent-1:s3cret@broker.example")) == (
        "mqtts://agent-1:***@broker.example:8883"
    )
    assert str(parse_broker_url("mqtt://[::1]:1884")) == "mqtt://[::1]:1884"
