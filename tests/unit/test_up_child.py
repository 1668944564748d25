"""`picket up`'s supervision of one child (shared.up.Child)."""

from __future__ import annotations

import os
import sys

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
