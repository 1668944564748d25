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
