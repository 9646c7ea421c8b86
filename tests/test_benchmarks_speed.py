"""The speed benchmark's measuring helpers (the figures themselves come from running it)."""
from __future__ import annotations

import numpy as np

from vesselseg.benchmarks.speed import BATCHES, runner_throughputs


def test_runner_throughputs_alternate_backends_and_report_every_batch_size():
    calls: list[tuple[str, int]] = []

    def runner(name):
        def run(x: np.ndarray) -> np.ndarray:
            calls.append((name, len(x)))
            return x[..., 0]
        return run

    rates = runner_throughputs({"a": runner("a"), "b": runner("b")}, size=8, repeat=1, rounds=2)

    assert set(rates) == {"a", "b"}
    for name in rates:
        assert sorted(rates[name]) == sorted(f"batch{b}" for b in BATCHES)
        assert all(rate > 0 for rate in rates[name].values())
    # per batch size: a, b, a, b (each turn = 2 warm-up calls + 1 timed call)
    first_batch = [name for name, batch in calls if batch == BATCHES[0]]
    assert first_batch == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
