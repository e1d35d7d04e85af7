"""An encoder and a head trained together for one target; batched inference over records."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from sne.encoders import Encoder, batch_to
from sne.train.targets import Target
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


class Predictor(nn.Module):
    """``encoder`` maps networks to codes ``z``; ``head`` maps ``z`` to the target's raw outputs."""

    def __init__(self, encoder: Encoder, head: nn.Module, target: Target) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.target = target

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.encoder(batch))

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

    def outputs(self, records: Sequence[NetworkRecord], batch_size: int = 64) -> torch.Tensor:
        """Raw head outputs (what the loss sees), in eval mode, on the CPU."""
        self.encoder.check_records(records)
        return self._map_records(records, batch_size, self)

    def predict(self, records: Sequence[NetworkRecord], batch_size: int = 64) -> np.ndarray:
        """Predictions in the target's own units, one per record."""
        return self.target.decode(self.outputs(records, batch_size)).numpy()

    def embed(self, records: Sequence[NetworkRecord], batch_size: int = 64) -> np.ndarray:
        """Encodings ``z`` of shape (len(records), encoder.out_dim)."""
        self.encoder.check_records(records)
        return self._map_records(records, batch_size, self.encoder).numpy()
