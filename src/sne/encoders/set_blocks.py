"""Set Transformer blocks (Lee et al. 2019) over padded sets with key-padding masks.

Sets are batched as ``(batch, size, dim)`` tensors; ``mask`` is ``(batch, size)`` and ``True`` marks
real elements. Padded elements are never attended to, so they cannot change any real output;
their own outputs are unspecified and must stay masked downstream. Every set must hold at least
one real element (a query that sees no key has no defined attention).

    MAB(X, Y) = H + rFF(H),   H = X + MultiHead(X, Y, Y)
    SAB(X)    = MAB(X, X)
    PMA(X)    = MAB(S, rFF(X))           S: k learned seed vectors

LayerNorm is optional and off by default, as in the SNE paper. ``layer_norm=True`` (or ``"post"``)
puts it after each residual sum, as the Set Transformer does; ``"pre"`` puts it on each branch's input
and leaves the residual stream unnormalised, as most transformers now do: their gradients at
initialisation stay well-behaved without a learning-rate warm-up (Xiong et al. 2020).

``qk_norm=True`` layer-normalises each head's queries and keys before their dot product (Dehghani
et al. 2023): without it, nothing bounds the attention logits, and in SNE they grew 60x within a few
hundred steps at lr 1e-3, saturating the softmax and stalling training at the mean predictor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def norm_placement(layer_norm: bool | str) -> str | None:
    """Where a ``layer_norm`` value puts LayerNorm: ``None``, ``"post"`` (also ``True``) or ``"pre"``."""
    if isinstance(layer_norm, bool):
        return "post" if layer_norm else None
    if layer_norm in ("post", "pre"):
        return layer_norm
    raise ValueError(f"layer_norm must be true, false, 'post' or 'pre', got {layer_norm!r}")


class RowFF(nn.Module):
    """Row-wise feed-forward ``Linear -> ReLU -> Linear``, applied to every element alike."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MAB(nn.Module):
    """Multihead attention block: queries ``x`` attend to keys/values ``y``."""

    def __init__(self, dim: int, heads: int, layer_norm: bool | str = False, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm_first = norm_placement(layer_norm) == "pre"
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.ff = RowFF(dim)
        self.norm_attention = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.norm_ff = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, size, dim = x.shape
        return x.view(batch, size, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = x
        if self.norm_first:
            x, y = (self.norm_attention(x),) * 2 if y is x else (self.norm_attention(x), self.norm_attention(y))
        if y is x:  # self-attention: one projection for queries, keys and values (fewer, larger matmuls)
            weight = torch.cat([self.q.weight, self.k.weight, self.v.weight])
            bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
            q, k, v = map(self._split_heads, F.linear(x, weight, bias).chunk(3, dim=-1))
        else:
            q, k, v = self._split_heads(self.q(x)), self._split_heads(self.k(y)), self._split_heads(self.v(y))
        q, k = self.q_norm(q), self.k_norm(k)
        # (batch, 1, 1, keys) broadcasts over heads and queries; True = may be attended to.
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = residual + self.o(attended.transpose(1, 2).reshape(residual.shape))
        if self.norm_first:
            return h + self.ff(self.norm_ff(h))
        h = self.norm_attention(h)
        return self.norm_ff(h + self.ff(h))


class SAB(nn.Module):
    """Set attention block ``MAB(X, X)``: permutation-equivariant set-to-set map."""

    def __init__(self, dim: int, heads: int, layer_norm: bool | str = False, qk_norm: bool = False) -> None:
        super().__init__()
        self.mab = MAB(dim, heads, layer_norm, qk_norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mab(x, x, mask)


class PMA(nn.Module):
    """Pooling by multihead attention: ``seeds`` learned queries attend to ``rFF(X)``.

    Returns ``(batch, seeds, dim)``; permutation-invariant in the set's elements.
    """

    def __init__(self, dim: int, heads: int, seeds: int = 1, layer_norm: bool | str = False,
                 qk_norm: bool = False) -> None:
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(seeds, dim))
        nn.init.xavier_uniform_(self.seeds)
        self.ff = RowFF(dim)
        self.mab = MAB(dim, heads, layer_norm, qk_norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        seeds = self.seeds.unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.mab(seeds, self.ff(x), mask)


class ResidualFF(nn.Module):
    """``X + rFF(X)``: the set-function-free stand-in for a SAB (no interaction between elements)."""

    def __init__(self, dim: int, layer_norm: bool | str = False) -> None:
        super().__init__()
        self.ff = RowFF(dim)
        self.norm_first = norm_placement(layer_norm) == "pre"
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.ff(self.norm(x)) if self.norm_first else self.norm(x + self.ff(x))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (batch, size, dim) over the real elements of each set -> (batch, dim)."""
    mask = mask.unsqueeze(-1)
    # masked_fill, not a product: padded rows may hold anything, even non-finite values.
    return x.masked_fill(~mask, 0.0).sum(dim=1) / mask.sum(dim=1).to(x.dtype)


#: What :func:`set_statistics` returns, in order.
SET_STATISTICS = ("mean", "max", "min", "std")


def set_statistics(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean, max, min and standard deviation of ``x`` (batch, size, dim) over the real elements of
    each set, concatenated -> (batch, 4 dim): the aggregators of principal neighbourhood aggregation
    (Corso et al. 2020). Attention pooling is a weighted mean: extremes and spread it reaches only
    through sharp, learned weights."""
    real = mask.unsqueeze(-1)
    mean = masked_mean(x, mask)
    centred = (x - mean.unsqueeze(1)).masked_fill(~real, 0.0)
    variance = centred.square().sum(dim=1) / real.sum(dim=1).to(x.dtype)
    # Clamped, so the square root's gradient stays finite on one-element sets (variance 0).
    std = variance.clamp_min(1e-12).sqrt()
    largest = x.masked_fill(~real, float("-inf")).amax(dim=1)
    smallest = x.masked_fill(~real, float("inf")).amin(dim=1)
    return torch.cat([mean, largest, smallest, std], dim=-1)
