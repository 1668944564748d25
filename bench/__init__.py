"""Picket's benchmark suite: `make bench` or `python -m bench [engine|lateness|timing ...]`.

Every benchmark talks only to loopback servers it starts itself, runs for a bounded time,
and prints its figures next to a peer measured in the same run (absolute numbers on a
2-core machine mean little). Nothing here passes or fails: goals are printed beside the
measurements, met or not. See docs/performance.md.
"""
