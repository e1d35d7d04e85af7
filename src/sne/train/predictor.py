"""An encoder and a head trained together for one target; batched inference over records."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from sne.encoders import Encoder, batch_to
from sne.train.targets import Target
from sne.weights.permute import random_sign_flips, supports_sign_flips
from sne.weights.record import NetworkRecord


#: Most network parameters encoded in one inference batch: a batch of 64 ViTs of 50k parameters each
#: took Neural Graphs (14x14 kernels) past 22 GB; this bounds every encoder's batch by what it reads.
INFERENCE_PARAMETERS = 500_000


def inference_batches(records: Sequence[NetworkRecord], batch_size: int,
                      max_parameters: int | None = None) -> list[slice]:
    """Consecutive slices of ``records``, each of at most ``batch_size`` networks and, unless one
    network alone has more, ``max_parameters`` (default :data:`INFERENCE_PARAMETERS`) parameters."""
    max_parameters = INFERENCE_PARAMETERS if max_parameters is None else max_parameters
    slices, start, total = [], 0, 0
    for i, record in enumerate(records):
        size = record.num_parameters
        if i > start and (i - start == batch_size or total + size > max_parameters):
            slices.append(slice(start, i))
            start, total = i, 0
        total += size
    if start < len(records):
        slices.append(slice(start, len(records)))
    return slices


#: Seed of the sign flips drawn for test-time averaging: each network gets the same copies whatever
#: else is predicted with it, so a prediction never depends on its batch.
TEST_TIME_FLIP_SEED = 20_240_601


class Predictor(nn.Module):
    """``encoder`` maps networks to codes ``z``; ``head`` maps ``z`` to the target's raw outputs.
    Outputs are averaged over each network and ``test_time_flips`` random sign-flipped copies of it
    (:attr:`~sne.train.run.TrainConfig.test_time_flips`)."""

    def __init__(self, encoder: Encoder, head: nn.Module, target: Target, test_time_flips: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.target = target
        self.test_time_flips = test_time_flips

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch, with_codes: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Raw head outputs; with ``with_codes`` also the codes ``z`` they were computed from."""
        codes = self.encoder(batch)
        outputs = self.head(codes)
        return (outputs, codes) if with_codes else outputs

    @torch.no_grad()
    def _map_records(self, records: Sequence[NetworkRecord], batch_size: int, fn) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            out = [
                fn(batch_to(self.encoder.prepare_inference(records[part]), self.device)).float().cpu()
                for part in inference_batches(records, batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.empty(0)

    def outputs(self, records: Sequence[NetworkRecord], batch_size: int = 64,
                test_time_flips: int | None = None) -> torch.Tensor:
        """Raw head outputs (what the loss sees), in eval mode, on the CPU, averaged over
        ``test_time_flips`` sign-flipped copies of each network that has flippable neurons (None:
        :attr:`test_time_flips`)."""
        self.encoder.check_records(records)
        outputs = self._map_records(records, batch_size, self)
        copies = self.test_time_flips if test_time_flips is None else test_time_flips
        flippable = [i for i, r in enumerate(records) if supports_sign_flips(r)] if copies else []
        if not flippable:
            return outputs
        generators = [torch.Generator().manual_seed(TEST_TIME_FLIP_SEED) for _ in flippable]
        total = outputs[flippable].double()
        for _ in range(copies):
            flipped = [random_sign_flips(records[i], g) for i, g in zip(flippable, generators)]
            total += self._map_records(flipped, batch_size, self).double()
        outputs[flippable] = (total / (1 + copies)).to(outputs.dtype)
        return outputs

    def predict(self, records: Sequence[NetworkRecord], batch_size: int = 64) -> np.ndarray:
        """Predictions in the target's own units, one per record."""
        return self.target.decode(self.outputs(records, batch_size)).numpy()

    def embed(self, records: Sequence[NetworkRecord], batch_size: int = 64) -> np.ndarray:
        """Encodings ``z`` of shape (len(records), encoder.out_dim)."""
        self.encoder.check_records(records)
        return self._map_records(records, batch_size, self.encoder).numpy()
