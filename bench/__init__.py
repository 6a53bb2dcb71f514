"""treescale's pull benchmark: its relays, each behind its own link, against the
reference registry behind one link of the same rate, in one run.

``bench/run`` (or ``python -m bench`` from the repository root) runs it; see
``bench/README.md`` for what it sets up, what it measures and the figures.
"""
