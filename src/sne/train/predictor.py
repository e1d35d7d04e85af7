"""An encoder and a head trained together for one target; batched inference over records."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from sne.encoders import Encoder, batch_to
from sne.train.targets import Target
from sne.weights.record import NetworkRecord


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
                fn(batch_to(self.encoder.prepare_inference(records[i : i + batch_size]), self.device)).float().cpu()
                for i in range(0, len(records), batch_size)
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
