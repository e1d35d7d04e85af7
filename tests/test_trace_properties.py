"""Property-based: randomly wired networks keep their function under the symmetries their trace finds."""

from __future__ import annotations

import copy

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from sne.weights import random_equivalent_permutation, record_from_module

ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Identity]


class Block(nn.Module):
    """One of: plain conv, depthwise conv, residual pair, two concatenated branches, grouped conv."""

    def __init__(self, kind: str, channels: int, width: int, activation: type, norm: str) -> None:
        super().__init__()
        self.kind = kind
        norm_layer = {"batch": lambda c: nn.BatchNorm2d(c), "group": lambda c: nn.GroupNorm(1, c),
                      "none": lambda c: nn.Identity()}[norm]
        self.act = activation()
        if kind == "plain":
            self.conv, self.norm, self.out = nn.Conv2d(channels, width, 3, padding=1), norm_layer(width), width
        elif kind == "depthwise":
            self.conv, self.norm, self.out = nn.Conv2d(channels, channels, 3, padding=1, groups=channels), \
                norm_layer(channels), channels
        elif kind == "residual":
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
            self.norm = norm_layer(channels)
            self.conv2 = nn.Conv2d(channels, channels, 1)
            self.out = channels
        elif kind == "concat":
            self.conv = nn.Conv2d(channels, width, 1)
            self.conv2 = nn.Conv2d(channels, width, 3, padding=1)
            self.norm = norm_layer(2 * width)
            self.out = 2 * width
        else:  # grouped: two groups, channels must be even
            self.conv, self.norm, self.out = nn.Conv2d(channels, 2 * width, 3, padding=1, groups=2), \
                norm_layer(2 * width), 2 * width

    def forward(self, x):
        if self.kind == "residual":
            return x + self.conv2(self.act(self.norm(self.conv(x))))
        if self.kind == "concat":
            return self.act(self.norm(torch.cat([self.conv(x), self.conv2(x)], dim=1)))
        return self.act(self.norm(self.conv(x)))


class RandomCNN(nn.Module):
    def __init__(self, blocks, widths, activation, norm, pool: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        layers, channels = [], 4
        for kind, width in zip(blocks, widths):
            if kind == "grouped" and channels % 2:
                kind = "plain"
            block = Block(kind, channels, width, activation, norm)
            layers.append(block)
            channels = block.out
        self.blocks = nn.Sequential(*layers)
        self.pool = pool
        self.head = nn.Linear(channels if pool else channels * 16, 3)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        x = x.mean((2, 3)) if self.pool else torch.flatten(F.max_pool2d(x, 2), 1)
        return self.head(x)


def randomise(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point():
            tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.5)
    return module.eval()


def assert_equivalent(module: nn.Module, example: torch.Tensor, seed: int) -> None:
    record = record_from_module(module, example)
    assert set(record.to_state_dict()) == set(module.state_dict())
    double = copy.deepcopy(module).double()
    inputs = example.double() if example.is_floating_point() else example
    with torch.no_grad():
        reference = double(inputs)
    permuted = random_equivalent_permutation(record.to(torch.float64), torch.Generator().manual_seed(seed))
    double.load_state_dict(permuted.to_state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(double(inputs), reference, rtol=1e-9, atol=1e-9)


@settings(max_examples=12, deadline=None)
@given(
    blocks=st.lists(st.sampled_from(["plain", "depthwise", "residual", "concat", "grouped"]), min_size=1, max_size=4),
    widths=st.lists(st.integers(2, 6), min_size=4, max_size=4),
    activation=st.sampled_from(ACTIVATIONS),
    norm=st.sampled_from(["batch", "group", "none"]),
    pool=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_random_cnns_keep_their_function(blocks, widths, activation, norm, pool, seed):
    module = randomise(RandomCNN(blocks, widths, activation, norm, pool), seed)
    assert_equivalent(module, torch.randn(2, 3, 8, 8), seed)


class RandomTransformer(nn.Module):
    """Token embedding, learned positions, a stack of either library or hand-written blocks."""

    def __init__(self, dim: int, heads: int, depth: int, hand_written: bool, norm_first: bool, fused: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, dim)
        self.pos = nn.Parameter(torch.randn(1, 6, dim))
        self.heads, self.hand_written, self.fused = heads, hand_written, fused
        if hand_written:
            self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) if fused else
                                     nn.ModuleDict({k: nn.Linear(dim, dim) for k in "qkv"}) for _ in range(depth))
            self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
            self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
            self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                                      for _ in range(depth))
        else:
            layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True,
                                               norm_first=norm_first)
            self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 4)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos
        if self.hand_written:
            batch, length, dim = x.shape
            for qkv, proj, norm, mlp in zip(self.qkv, self.proj, self.norms, self.mlps):
                h = norm(x)
                q, k, v = qkv(h).split(dim, dim=-1) if self.fused else (qkv["q"](h), qkv["k"](h), qkv["v"](h))
                q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
                attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                x = x + proj(attended.transpose(1, 2).reshape(batch, length, dim))
                x = x + mlp(x)
        else:
            x = self.encoder(x)
        return self.head(x[:, 0])


@settings(max_examples=10, deadline=None)
@given(
    heads=st.integers(1, 3),
    head_dim=st.integers(2, 4),
    depth=st.integers(1, 2),
    hand_written=st.booleans(),
    norm_first=st.booleans(),
    fused=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_random_transformers_keep_their_function(heads, head_dim, depth, hand_written, norm_first, fused, seed):
    module = randomise(RandomTransformer(heads * head_dim, heads, depth, hand_written, norm_first, fused), seed)
    record = record_from_module(module, torch.randint(0, 11, (2, 6)))
    names = {group.name.split(" of ")[0] for group in record.symmetries}
    if heads > 1:
        assert "heads" in names
    assert_equivalent(module, torch.randint(0, 11, (2, 6)), seed)
