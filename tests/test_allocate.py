"""Budget allocation across layers (weightpress.model.allocate)."""

import numpy as np
import pytest

from weightpress.model.allocate import Candidate, allocate, total

def test_allocation_beats_uniform():
    # layer "a" compresses almost for free, layer "b" does not
    sizes = [100, 200, 400, 800, 1000]
    curves = {
        "a": [Candidate(b, e) for b, e in zip(sizes, [0.02, 0.01, 0.005, 0.001, 0.0])],
        "b": [Candidate(b, e) for b, e in zip(sizes, [0.9, 0.6, 0.3, 0.1, 0.0])],
    }
    choice = allocate(curves, 1200)
    b, cost = total(curves, choice)
    assert b <= 1200
    uniform = {"a": 2, "b": 2}  # 400 + 400 bytes: the same ratio for both layers
    _, cost_u = total(curves, uniform)
    assert cost < cost_u
    assert choice == {"a": 1, "b": 4}  # the optimum: most bytes to the layer that needs them
    with pytest.raises(ValueError, match="impossible"):
        allocate(curves, 150)


def test_allocation_is_optimal_on_small_cases():
    rng = np.random.default_rng(5)
    for _ in range(20):
        curves = {}
        for n in "abc":
            b = np.sort(rng.choice(np.arange(1, 50), 4, replace=False)) * 10
            e = np.sort(rng.uniform(0, 1, 4))[::-1]
            # convex curves, where the greedy hull walk is exactly optimal
            e = np.sort(np.maximum.accumulate(e))[::-1]
            curves[n] = [Candidate(int(x), float(y)) for x, y in zip(b, e)]
        budget = int(rng.integers(60, 1500))
        try:
            choice = allocate(curves, budget)
        except ValueError:
            continue
        best = min(
            (total(curves, {"a": i, "b": j, "c": k})[1]
             for i in range(4) for j in range(4) for k in range(4)
             if total(curves, {"a": i, "b": j, "c": k})[0] <= budget))
        # greedy on hulls: optimal for hull points, within one step otherwise
        assert total(curves, choice)[0] <= budget
        assert total(curves, choice)[1] <= best + max(c[0].error ** 2 for c in curves.values())
