"""Quantiles of weights for any count: torch.quantile refuses more than 2**24 values, which one
zoo's weights at one position (DeepSets' reference sets) or one large layer (StatNN) pass."""

from __future__ import annotations

import torch

from sne.encoders.common import quantiles
from sne.encoders.statnn import QUANTILES, tensor_statistics

LEVELS = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)


def test_small_tensors_get_torch_quantile_exactly():
    values = torch.randn(1001, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(quantiles(values, LEVELS), torch.quantile(values, LEVELS))


def test_more_values_than_torch_quantile_takes():
    count = 2**24 + 3  # odd: the median is one order statistic
    values = torch.randn(count, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    found = quantiles(values, LEVELS)
    assert found.dtype == torch.float64 and found.shape == LEVELS.shape
    assert found[0] == values.min() and found[-1] == values.max()
    assert found[3] == values.kthvalue(count // 2 + 1).values
    assert torch.all(found[1:] >= found[:-1])
    stats = tensor_statistics(values.float())
    assert torch.isfinite(stats).all() and stats.numel() == 2 + len(QUANTILES)
