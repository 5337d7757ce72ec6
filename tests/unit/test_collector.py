"""The garbage collector's set-up for batch processes (campaigns/collector.py). Each case runs in a fresh
interpreter: the collector is process-wide, and the test process's must stay CPython's."""

from __future__ import annotations

import json
import subprocess
import sys

# A stage's batch: 20,000 dicts (each holding a tuple) alive at once, then dropped, 50 times; the young
# collections it causes are counted by a gc callback (a count, not a time: the same on any machine).
BATCHES = """
import gc, json, sys
from campaigns.collector import tune_collector
modules_before = len(gc.get_objects())
tune_collector(int(sys.argv[1]))
collections = [0, 0, 0]
gc.callbacks.append(lambda phase, info: phase == "start" and collections.__setitem__(
    info["generation"], collections[info["generation"]] + 1))
for _ in range(50):
    batch = [{"recipient": (i, str(i))} for i in range(20_000)]
    del batch
import weakref
class Node: pass
cycle = Node()
cycle.itself = cycle  # garbage in a reference cycle, made after the freeze: still collected
ref = weakref.ref(cycle)
del cycle
gc.collect()
print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "modules_before": modules_before, "collections": collections,
                  "cycle_collected": ref() is None}))
"""


def _run(young_threshold: int) -> dict:
    out = subprocess.run([sys.executable, "-c", BATCHES, str(young_threshold)], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


def test_tuned_batches_are_freed_without_a_collection_and_startup_objects_are_frozen():
    tuned = _run(50_000)
    assert tuned["threshold"][0] == 50_000
    assert tuned["frozen"] >= tuned["modules_before"] * 0.9  # what the process had imported
    # Only the explicit gc.collect() at the end: no batch was ever scanned.
    assert tuned["collections"] == [0, 0, 1], tuned
    assert tuned["cycle_collected"]


def test_cpythons_collector_scans_every_batch_and_700_leaves_it_as_it_is():
    default = _run(700)
    assert default["threshold"][0] == 700 and default["frozen"] == 0
    # 20,000 containers alive at once cross 700 many times per batch: what the tuning saves.
    assert default["collections"][0] >= 50 * (20_000 * 2 // 700) // 2, default
