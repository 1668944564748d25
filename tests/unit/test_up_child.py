"""`picket up`'s supervision of one child (shared.up.Child)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from shared.up import Child


async def test_a_child_line_longer_than_the_stream_limit_is_skipped_not_fatal() -> None:
    """A child that prints a 200 KiB line keeps being read: its later lines still arrive and
    its exit is seen (before, the reader died and took the supervisor with it)."""
    script = "import sys; print('x' * 200_000); print('after the long line'); sys.exit(3)"
    child = Child("long-liner", [sys.executable, "-c", script], dict(os.environ))
    await child.start()
    assert await child.wait() == 3
    assert "after the long line" in child.tail, list(child.tail)
    assert any("left out" in line for line in child.tail), list(child.tail)
    assert "exited with code 3" in child.why(3)


async def test_an_unusable_data_dir_is_one_line_and_exit_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.up import UpSettings, supervise

    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = UpSettings(data_dir=blocker / "data", embedded_broker="amqtt")
    assert await supervise(settings) == 1
    assert f"cannot use the data directory {blocker / 'data'}" in caplog.text


@pytest.mark.parametrize("source", ["setting", "environment"])
def test_only_the_controller_is_given_the_admin_password(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker and the agent have no use for it: a secret goes only where it is needed."""
    from shared.up import UpSettings, child_environments

    secret = "up-admin-secret"
    if source == "environment":
        monkeypatch.setenv("PICKET_ADMIN_PASSWORD", secret)
        settings = UpSettings(data_dir=tmp_path)
    else:
        monkeypatch.delenv("PICKET_ADMIN_PASSWORD", raising=False)
        settings = UpSettings(data_dir=tmp_path, admin_password=secret)
    others, controller = child_environments(settings, tmp_path, "127.0.0.1", 18830)
    assert controller["PICKET_ADMIN_PASSWORD"] == secret
    assert secret not in others.values()
    assert "PICKET_ADMIN_PASSWORD" not in others
    assert others["PICKET_BROKER_URL"] == controller["PICKET_BROKER_URL"]
