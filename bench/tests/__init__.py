"""The benchmark's own tests: its pieces measure what they say, and the soak's report holds.

They live beside what they test, so ``tests/`` never imports ``bench``; both take their
processes from ``testbed``. pytest collects them too (pyproject: ``testpaths``).
"""
