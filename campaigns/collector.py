"""CPython's cyclic garbage collector, set up for a process that handles records in batches.

Almost everything a stage allocates per record (a decoded record, its rows, its outcome, the tuples and
dicts around them) is acyclic and freed by reference counting when its batch ends. The cyclic collector
does not know that: with CPython's defaults it runs a young collection every 700 net container
allocations, so a sender batch (tens of thousands of containers alive at once) is scanned many times
while it is being built, its survivors are promoted, and the promotions trigger full collections that
walk the whole heap, the ~140,000 objects of the imported modules included. Measured in the benchmark's
worker (100,000 recipients, ``time.thread_time`` around each collection): 2.9 CPU s of the worker's
19.7 (15 %), 2.1 of them in 21 full collections; 0.6 of the analytics process's 10.4.

:func:`tune_collector` does two things, once, when a process has imported what it runs:

* ``gc.freeze()``: what exists then (modules, classes, functions, settings) lives as long as the process;
  frozen, no collection scans it again.
* a young generation of ``young_threshold`` net allocations: larger than what a batch keeps alive at once,
  so a batch's containers are freed by reference counting before a collection ever sees them. The older
  generations keep CPython's ratios. Garbage in reference cycles still goes, a little later: at most
  ``young_threshold`` more container objects (a few MB) wait for the next young collection.

Only process entry points call it (the worker, its analytics process, the provider simulator, the benchmark
harness and its worker): a library must not change the collector of the process that imports it (the test
suite runs workers in its own process, and frozen objects are invisible to ``gc.get_referrers``).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

CPYTHON_YOUNG_THRESHOLD = 700


def tune_collector(young_threshold: int) -> None:
    """Freeze what exists now and raise the young generation's threshold to ``young_threshold``
    (:data:`CPYTHON_YOUNG_THRESHOLD` or less: leave the collector as CPython set it)."""
    if young_threshold <= CPYTHON_YOUNG_THRESHOLD:
        return
    gc.collect()  # what is garbage now must not be frozen: frozen objects are never collected
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
    log.info("garbage collector: %d objects frozen, a young collection every %d allocations",
             gc.get_freeze_count(), young_threshold)
