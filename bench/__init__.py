"""The benchmark harness: ``python -m bench.run``, from the repository's root.

``run`` is the command; ``contenders`` starts the gateways, ``clients`` drives them,
``scenarios`` holds one module per scenario (its measurement and its rows), ``report`` and
``chart`` turn the results into the table, the JSON and the PNG. The other scripts here
(``fast_upstream``, ``floors``, ``stall_and_disconnect``, ``soak``, ``edges``) also run alone,
each as ``python -m bench.<name>``. The processes and raw-socket clients the tests use too
come from the top-level ``testbed`` package; nothing here imports ``tests/``.
"""
