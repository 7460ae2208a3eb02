"""The benchmark harness: ``python bench/run.py`` (or ``python -m bench.run``).

``run`` is the command; ``contenders`` starts the gateways, ``clients`` drives them,
``scenarios`` holds one module per scenario (its measurement and its rows), ``report`` and
``chart`` turn the results into the table, the JSON and the PNG. The other scripts here
(``fast_upstream``, ``floors``, ``stall_and_disconnect``, ``soak``, ``edges``) also run alone.
"""
