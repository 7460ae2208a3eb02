"""What the real-socket tests and the benchmarks both drive: real processes and raw sockets.

Neither ``tests/`` nor ``bench/`` owns it, and it imports neither; both import it.

- ``processes``: gateway and upstream child processes (start, wait until listening, stop),
  ``/proc`` readings (RSS, sockets, listening ports), a free port.
- ``upstream_server``: the scriptable upstream HTTP server (``python -m
  testbed.upstream_server``), which prints what happened to each request.
- ``web_proxy``: ``twisted.web.proxy`` as the baseline gateway (``python -m testbed.web_proxy``).
- ``clients``: blocking raw-socket clients (a request's bytes, a client that stops reading,
  reading to the close).

It is a top-level package of the repository: the editable install puts the root on
``sys.path`` (pyproject: ``dev-mode-dirs``), pytest does too (``pythonpath``), and so does
``python -m bench.run`` run from the root.
"""
