"""Sine INRs fitted by code that shares nothing with sne's recipes: a held-out test set for the
recipe-shift table (issue 15), written as a folder that ``sne zoo import folder`` reads.

What differs from the ``sine-inr`` recipe: each network is its own ``nn.Sequential`` trained alone
with ``torch.optim.Adam`` on random minibatches (not stacked full-batch fitting), PyTorch's default
``nn.Linear`` initialisation (not SIREN's), a sine on the domain [0, 2 pi) (not [-pi, pi)), another
learning rate and step count. The architecture is the same (1 -> 32 -> 32 -> 1, sin(30 x) hidden
activations), so encoders of one fixed architecture can read it too.

    python scripts/foreign_sine_inrs.py OUT --n 200 --seed 0
    sne zoo import folder OUT --targets OUT/targets.csv --arch scripts/foreign_sine_inrs.py:architecture --out zoos/sine-foreign

The checkpoints are bare state_dicts, which do not say what the activations are; ``--arch`` names the
module they came from, so the zoo records its sines (what sign flips need) as a user's import would.

Every network is listed in the test split. Fit errors go to the table beside each frequency, so
a reader can check the networks fit their sines.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch
from torch import nn


class Sin(nn.Module):
    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)


def architecture() -> tuple[nn.Module, torch.Tensor]:
    """The network every INR here is, with an example input (the ``--arch`` factory of the import)."""
    return nn.Sequential(nn.Linear(1, 32), Sin(), nn.Linear(32, 32), Sin(), nn.Linear(32, 1)), torch.zeros(1, 1)


def fit_one(frequency: float, generator: torch.Generator, steps: int, lr: float, points: int,
            batch: int) -> tuple[nn.Module, float]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    net, _ = architecture()
    x = torch.linspace(0, 2 * math.pi, points + 1)[:-1]
    inputs, targets = (x / math.pi - 1).unsqueeze(1), torch.sin(frequency * x).unsqueeze(1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        chosen = torch.randint(0, points, (batch,), generator=generator)
        loss = (net(inputs[chosen]) - targets[chosen]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error = float((net(inputs) - targets).square().mean())
    return net, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--points", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(args.seed)
    (args.out / "networks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.n):
        frequency = 0.5 + 9.5 * float(torch.rand((), generator=generator))
        net, error = fit_one(frequency, generator, args.steps, args.lr, args.points, args.batch)
        path = args.out / "networks" / f"net{i:04d}.pth"
        torch.save(net.state_dict(), path)
        rows.append({"file": f"networks/{path.name}", "split": "test", "frequency": frequency, "fit_mse": error})
        print(f"{i + 1}/{args.n} frequency {frequency:.3f} fit mse {error:.2e}", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "targets.csv", index=False)
    # The one target; fit_mse stays a column of the zoo's table, not something to predict.
    (args.out / "targets.json").write_text(json.dumps({"targets": {"frequency": {"kind": "regression"}}}))
    print(f"median fit mse {table['fit_mse'].median():.2e}; import with: sne zoo import folder {args.out} "
          f"--targets {args.out}/targets.csv --arch {__file__}:architecture --out ZOO")


if __name__ == "__main__":
    main()
