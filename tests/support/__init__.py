"""What the tests share, one module per kind of help.

- ``harness``: the in-memory gateway (``Harness``, ``Peer``): a site over StringTransport, its
  real Agent over MemoryReactorClock; no socket, no sleep.
- ``wire``: the bytes on the wire: response parsing, chunk decoding, the error envelope.
- ``deferreds``: a Deferred's result (or whether it fired) without a reactor.
- ``reactor``: typed helpers for tests on pytest-twisted's real reactor (``twisted_test``,
  ``until``, ``listen_tracking``).
- ``logs``: log capture, in process and from a gateway process's JSON log file.
- ``raw_upstream``: a raw-TCP upstream in a thread, for what twisted.web cannot send.
- ``cores``: what the two cores' tests say of a run (``Then``, ``UNEXPECTED``, ``check_run``).

What the benchmarks use too (processes, the scriptable upstream, raw-socket clients) is the
top-level ``testbed`` package. pytest puts ``tests/`` and the repository's root on
``sys.path`` (pyproject: ``pythonpath``), so a test imports ``from support.wire import
dechunk`` and ``from testbed.processes import UpstreamProcess``.
"""
