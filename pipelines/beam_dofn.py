"""The Beam DoFn base of every stage: counters under the stage's namespace, made once per worker.

Imported only where a pipeline is built (it imports Apache Beam), never by the Dagster code location.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics


class CountingDoFn(beam.DoFn):
    """A DoFn that counts into Beam metrics as ``<namespace>/<name>`` (``beam_stage.counters`` reads them back).

    ``count(name, n)`` has the signature of the ``count`` callbacks that the Beam-free shard functions take.
    """

    def __init__(self, namespace: str):
        super().__init__()
        self.namespace = namespace
        self._counters: dict = {}

    def count(self, name: str, n: int = 1) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(self.namespace, name)
        counter.inc(n)
