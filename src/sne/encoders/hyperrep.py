"""HyperRep (Schürholt et al. 2021): a self-supervised weight autoencoder, then a probe on its codes.

Tokens: one per neuron (output channel) of every layer, in record order: its incoming weights
(kernels flattened) followed by its bias, zero-padded to the longest token; the network's
parameters are first standardised per layer part (weight, bias) with training statistics.

    tokens -> Linear + learned position embedding, [summary token] -> transformer -> summary -> Linear -> z
    z -> Linear + learned position embeddings -> transformer -> Linear -> reconstructed tokens

Pretraining (:meth:`HyperRepEncoder.pretrain`, called by the training loop before the first epoch,
on the training split, without labels) minimises
``(1 - contrastive_weight) * reconstruction MSE + contrastive_weight * NT-Xent`` over two views of
each network, both corrupted by Gaussian noise and erasing (zeroing a random fraction of tokens).
The decoder reconstructs the first view's clean tokens (denoising); NT-Xent pulls the projections
of a network's two views together and apart from the other networks'. With ``permute`` the second
view is also a random functionally-equivalent permutation of the hidden neurons
(:mod:`sne.weights.permute`), so the contrastive term asks for permutation invariance; the first
view is never permuted, since reconstructing a permuted network asks the code to store the
permutation. ``permute`` is off by default: measured on the shared-init test zoo (120 networks,
120 steps), with it NT-Xent stayed at chance, log(2B - 1), and the frozen probe at the mean
predictor; without it the probe reached 0.2 normalised MSE.

With ``freeze`` (the paper's protocol, the default) the encoder is fixed after pretraining: its
codes carry no gradient, so the shared optimiser trains only the head, which is the probe. The
decoder and projection head are part of the module and count in its parameters. The token
layout follows the layer list: one encoder takes one architecture.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from sne.progress import Progress
from torch import nn
from torch.nn import functional as F

from sne.encoders.base import Architecture, Encoder, register_encoder
from sne.encoders.common import (
    mean_std,
    check_fixed_architecture,
    check_positive_int,
    flat_size,
    require_architecture,
    resolve_options,
)
from sne.errors import SneError
from sne.weights.batch import StackedWeights
from sne.weights.permute import random_equivalent_permutation, supports_permutation
from sne.weights.record import NetworkRecord

DEFAULT_OPTIONS: dict[str, Any] = {
    "hidden": 64,
    "heads": 4,
    "layers": 2,
    "out_dim": 32,
    "projection_dim": 32,
    "freeze": True,
    "pretrain_epochs": 50,
    "pretrain_lr": 1e-3,
    "pretrain_batch_size": 64,
    "contrastive_weight": 0.5,
    "temperature": 0.1,
    "noise": 0.05,
    "erase": 0.1,
    "permute": False,
}


def token_layout(architecture: Sequence) -> torch.Tensor:
    """``(tokens, token_length)`` indices into the flat parameter vector; ``-1`` marks padding.

    The flat vector is :meth:`sne.weights.StackedWeights.flat`'s: each layer's weight, then its bias.
    """
    rows, offset = [], 0
    for _, shape, has_bias in architecture:
        out, fan_in = int(shape[0]), math.prod(int(s) for s in shape[1:])
        weights = offset + torch.arange(out * fan_in).view(out, fan_in)
        offset += out * fan_in
        if has_bias:
            weights = torch.cat([weights, (offset + torch.arange(out)).unsqueeze(1)], dim=1)
            offset += out
        rows.append(weights)
    length = max(r.shape[1] for r in rows)
    return torch.cat([F.pad(r, (0, length - r.shape[1]), value=-1) for r in rows])


def part_ranges(architecture: Sequence) -> list[tuple[int, int]]:
    """``(start, end)`` in the flat vector of every layer's weight and bias."""
    ranges, offset = [], 0
    for _, shape, has_bias in architecture:
        for size in (math.prod(int(s) for s in shape), int(shape[0]) if has_bias else 0):
            if size:
                ranges.append((offset, offset + size))
                offset += size
    return ranges


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020): row i of ``a`` and of ``b`` are positives, all other rows negatives."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def _transformer(hidden: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@register_encoder("hyperrep")
class HyperRepEncoder(Encoder):
    """Neuron tokens -> transformer encoder -> z, pretrained as an autoencoder; fixed architecture.

    Options (:data:`DEFAULT_OPTIONS`): ``hidden`` token width, ``heads``, ``layers`` transformer
    layers of the encoder and of the decoder each, ``out_dim`` size of z, ``projection_dim`` of the
    contrastive projection head; ``freeze`` the encoder after pretraining; ``pretrain_epochs``,
    ``pretrain_lr``, ``pretrain_batch_size`` (Adam); ``contrastive_weight`` of NT-Xent against
    reconstruction, ``temperature`` of NT-Xent; augmentations: ``noise`` (std of Gaussian noise on
    the standardised parameters), ``erase`` (fraction of tokens zeroed), ``permute`` (random
    equivalent permutation of hidden neurons).
    """

    def __init__(self, *, architecture: Architecture | None = None, **options: Any) -> None:
        o = resolve_options("hyperrep", DEFAULT_OPTIONS, options)
        for name in ("hidden", "heads", "layers", "out_dim", "projection_dim", "pretrain_batch_size"):
            check_positive_int("hyperrep", name, o[name])
        check_positive_int("hyperrep", "pretrain_epochs", o["pretrain_epochs"], minimum=0)
        if o["hidden"] % o["heads"]:
            raise SneError(f"hyperrep option hidden ({o['hidden']}) must be divisible by heads ({o['heads']})")
        for name, low, high in (("contrastive_weight", 0, 1), ("erase", 0, 1), ("noise", 0, math.inf),
                                ("pretrain_lr", 0, math.inf), ("temperature", 0, math.inf)):
            value = o[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise SneError(f"hyperrep option {name} must be a number in [{low}, {high}], got {value!r}")
        for name in ("freeze", "permute"):
            if not isinstance(o[name], bool):
                raise SneError(f"hyperrep option {name} must be true or false, got {o[name]!r}")
        architecture = require_architecture("hyperrep", architecture)
        super().__init__(architecture=architecture, **o)
        self.out_dim = o["out_dim"]
        hidden = o["hidden"]
        layout = token_layout(architecture)
        tokens, length = layout.shape
        # Padding slots point at an extra zero appended to the flat vector.
        self.register_buffer("token_index", torch.where(layout < 0, flat_size(architecture), layout), persistent=False)
        self.register_buffer("token_mask", layout >= 0, persistent=False)
        size = flat_size(architecture)
        self.register_buffer("input_mean", torch.zeros(size))
        self.register_buffer("input_std", torch.ones(size))

        self.embed = nn.Linear(length, hidden)
        self.position = nn.Parameter(0.02 * torch.randn(tokens + 1, hidden))
        self.summary = nn.Parameter(0.02 * torch.randn(1, 1, hidden))
        self.encoder_stack = _transformer(hidden, o["heads"], o["layers"])
        self.to_code = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, self.out_dim))
        self.from_code = nn.Linear(self.out_dim, hidden)
        self.decoder_position = nn.Parameter(0.02 * torch.randn(tokens, hidden))
        self.decoder_stack = _transformer(hidden, o["heads"], o["layers"])
        self.to_tokens = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, length))
        self.projection = nn.Sequential(
            nn.Linear(self.out_dim, self.out_dim), nn.ReLU(), nn.Linear(self.out_dim, o["projection_dim"])
        )

    # --- input ---------------------------------------------------------------------------------

    def check_records(self, records: Sequence[NetworkRecord]) -> None:
        check_fixed_architecture("hyperrep", self.architecture, records)

    @torch.no_grad()
    def fit_input_statistics(self, records: Sequence[NetworkRecord]) -> None:
        """Mean and standard deviation of each layer's weight and bias over all training networks."""
        self.check_records(records)
        flat = StackedWeights.from_records(records, torch.float64).flat()
        for start, end in part_ranges(self.architecture):
            self.input_mean[start:end], self.input_std[start:end] = mean_std(flat[:, start:end])

    def prepare(self, records: Sequence[NetworkRecord]) -> torch.Tensor:
        self.check_records(records)
        return StackedWeights.from_records(records, self.input_mean.dtype).flat()

    def tokens(self, flat: torch.Tensor) -> torch.Tensor:
        """Raw flat parameters ``(batch, P)`` -> standardised tokens ``(batch, tokens, length)``."""
        standardized = (flat - self.input_mean) / self.input_std
        padded = F.pad(standardized, (0, 1))
        return padded[:, self.token_index] * self.token_mask

    # --- the autoencoder -----------------------------------------------------------------------

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = torch.cat([self.summary.expand(len(x), -1, -1), x], dim=1) + self.position
        return self.to_code(self.encoder_stack(x)[:, 0])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.from_code(z).unsqueeze(1) + self.decoder_position
        return self.to_tokens(self.decoder_stack(x)) * self.token_mask

    def reconstruction_loss(self, reconstructed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Mean squared error over real (not padding) token entries."""
        return (reconstructed - tokens).square().sum() / (self.token_mask.sum() * len(tokens))

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        # Frozen: no gradient reaches the encoder, so the shared optimiser leaves it as pretrained.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.options["freeze"]):
            return self.encode_tokens(self.tokens(flat))

    # --- pretraining ---------------------------------------------------------------------------

    def _flat_on_device(self, records: Sequence[NetworkRecord]) -> torch.Tensor:
        """Flat parameters ``(batch, P)`` of ``records`` in the encoder's dtype, on its device."""
        return StackedWeights.from_records(records, self.input_mean.dtype).flat().to(self.input_mean.device)

    def _permuted_tokens(self, records: Sequence[NetworkRecord], generator: torch.Generator) -> torch.Tensor:
        """Standardised tokens of a random functionally-equivalent permutation of each network."""
        records = [random_equivalent_permutation(r, generator) if supports_permutation(r) else r for r in records]
        return self.tokens(self._flat_on_device(records))

    def _corrupt(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Gaussian noise on real entries, then a random ``erase`` fraction of tokens set to zero."""
        noise = torch.randn(tokens.shape, generator=generator).to(tokens) * self.options["noise"]
        kept = (torch.rand(tokens.shape[:2], generator=generator) >= self.options["erase"]).to(tokens)
        return (tokens + noise * self.token_mask) * kept.unsqueeze(-1)

    @torch.no_grad()
    def _clean_reconstruction(self, records: Sequence[NetworkRecord], batch_size: int) -> float:
        """Reconstruction MSE of the un-augmented networks (standardised units)."""
        total = 0.0
        for i in range(0, len(records), batch_size):
            tokens = self.tokens(self.prepare(records[i : i + batch_size]).to(self.input_mean.device))
            total += float(self.reconstruction_loss(self.decode(self.encode_tokens(tokens)), tokens)) * len(tokens)
        return total / len(records)

    def pretrain(self, records: Sequence[NetworkRecord], train_config: dict, progress: bool) -> dict | None:
        """Train the autoencoder on ``records`` (no labels); return per-epoch losses."""
        o = self.options
        self.check_records(records)
        generator = torch.Generator().manual_seed(int(train_config.get("seed", 0)) * 1_000_003 + 17)
        optimizer = torch.optim.Adam(self.parameters(), lr=o["pretrain_lr"])
        batch_size = o["pretrain_batch_size"]
        was_training = self.training
        started = time.perf_counter()
        log: dict[str, Any] = {
            "reconstruction_before": self._clean_reconstruction(records, batch_size), "epochs": [],
        }
        self.train()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("pretraining hyperrep", total=o["pretrain_epochs"])
            for epoch in range(o["pretrain_epochs"]):
                totals = {"loss": 0.0, "reconstruction": 0.0, "contrastive": 0.0}
                batches = [b for b in torch.randperm(len(records), generator=generator).split(batch_size) if len(b) > 1]
                for batch in batches:
                    members = [records[i] for i in batch.tolist()]
                    clean = self.tokens(self._flat_on_device(members))
                    permuted = self._permuted_tokens(members, generator) if o["permute"] else clean
                    codes = [self.encode_tokens(self._corrupt(view, generator)) for view in (clean, permuted)]
                    reconstruction = self.reconstruction_loss(self.decode(codes[0]), clean)
                    contrastive = nt_xent(self.projection(codes[0]), self.projection(codes[1]), o["temperature"])
                    loss = (1 - o["contrastive_weight"]) * reconstruction + o["contrastive_weight"] * contrastive
                    if not torch.isfinite(loss):
                        raise SneError(f"hyperrep pretraining diverged at epoch {epoch + 1}; try a lower pretrain_lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    parts = {"loss": loss, "reconstruction": reconstruction, "contrastive": contrastive}
                    for key, value in parts.items():
                        totals[key] += float(value.detach()) * len(batch)
                seen = sum(len(b) for b in batches)
                log["epochs"].append({"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in totals.items()}})
                bar.advance(task)
        self.zero_grad(set_to_none=True)
        self.train(was_training)
        log["reconstruction_after"] = self._clean_reconstruction(records, batch_size)
        log["networks"] = len(records)
        log["seconds"] = time.perf_counter() - started
        return log
