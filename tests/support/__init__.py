"""What the tests share, one module per kind of help.

- ``harness``: the in-memory gateway (``Harness``, ``Peer``): a site over StringTransport, its
  real Agent over MemoryReactorClock; no socket, no sleep.
- ``wire``: the bytes on the wire: response parsing, chunk decoding, the error envelope, and the
  blocking raw-socket clients.
- ``deferreds``: a Deferred's result (or whether it fired) without a reactor.
- ``reactor``: typed helpers for tests on pytest-twisted's real reactor (``twisted_test``,
  ``until``, ``listen_tracking``).
- ``logs``: log capture, in process and from a gateway process's JSON log file.
- ``processes``: gateways and the scriptable upstream as child processes.
- ``upstream_server``, ``raw_upstream``: the upstreams those tests talk to (an HTTP one run as a
  process, a raw-TCP one as a thread).

The test directory is on ``sys.path`` because ``tests/conftest.py`` is there (pytest's rootdir
conftest insertion), so a test imports ``from support.wire import dechunk``.
"""
