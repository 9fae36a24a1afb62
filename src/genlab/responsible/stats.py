"""The statistics an audit reports: bootstrap intervals on group shares, exact per-group tests against a target
share, Holm's correction across groups, and a chi-square test of the whole mix that says when it is not valid."""

from __future__ import annotations

from typing import Any

import torch

LEVEL = 0.9  # the intervals' coverage
MIN_EXPECTED = 5  # chi-square's approximation needs this many expected items in every group


def share_intervals(groups: torch.Tensor, k: int, draws: int = 1000, seed: int = 0) -> torch.Tensor:
    """(k, 2) bootstrap intervals of each group's share among `groups` (group ids of n items)."""
    n = len(groups)
    if n == 0:
        return torch.zeros(k, 2, dtype=torch.float64)
    rows = torch.randint(0, n, (draws, n), generator=torch.Generator().manual_seed(seed))
    shares = torch.nn.functional.one_hot(groups[rows], k).double().mean(1)  # (draws, k)
    q = torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=torch.float64)
    return shares.quantile(q, dim=0).T


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: family-wise error held at the level across all the groups tested."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def binomial_p(count: int, n: int, share: float) -> float:
    """Two-sided exact test that a group's `count` of `n` is drawn at `share`."""
    from scipy.stats import binomtest

    if share <= 0:
        return 1.0 if count == 0 else 0.0
    return float(binomtest(count, n, min(share, 1.0)).pvalue)


def mix_test(counts: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Chi-square of the group counts against the target shares (over the groups the target holds), flagged as
    not valid when an expected count is under MIN_EXPECTED."""
    from scipy.stats import chisquare

    present = target > 0
    observed = counts[present].double()
    expected = target[present] / target[present].sum() * observed.sum()
    result = chisquare(observed.numpy(), expected.numpy())
    smallest = float(expected.min()) if len(expected) else 0.0
    valid = smallest >= MIN_EXPECTED
    return {"test": "chi-square, generated group counts against the target shares",
            "statistic": float(result.statistic), "p_value": float(result.pvalue), "valid": valid,
            "smallest_expected": smallest,
            "note": "" if valid else f"the smallest expected count is {smallest:.1f}, under {MIN_EXPECTED}: the "
                                      f"p-value is approximate; audit more samples (--n)"}
