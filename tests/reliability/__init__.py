"""The reliability suite (issue 6): faults, crashes and bad input, each scenario ending in exact counts.

Every scenario records one row (what was done, how many times, lost and double-counted occurrences,
recovery time) through `harness.record`; `scripts/reliability` collects the rows into the table of
docs/reliability.md. The fast part runs in the normal suite; the long part (`slow`) only with
RELIABILITY_LONG=1, which `scripts/reliability --long` sets.
"""
