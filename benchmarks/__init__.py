"""shekel's benchmarks: what a budget costs per call, per stream chunk, per ``with``, under load and in memory.

Not part of the test run. Run them all and print the table with::

    .venv/bin/python -m benchmarks            # or: python benchmarks/run.py
    .venv/bin/python -m benchmarks --quick    # fewer repeats, for a smoke run

Every time is a ratio against a baseline measured in the same run (median and min/max over repeats), next
to a deterministic ratio of Python + C function calls counted with ``sys.setprofile``. See
``docs/performance.md``.
"""
