#!/usr/bin/env python
"""How sharp each attention block of trained SNE runs is: the spread of its attention logits and the
entropy of its attention weights, on the first training networks of each run's zoo.

    python scripts/attention_logits.py RUN_DIR [RUN_DIR ...] --out results/attention_logits.json

Unbounded logits saturate the softmax and starve the stages below of gradient; a run that sat at the
mean predictor shows it here next to one that learned (``qk_norm`` bounds them).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import torch

from sne.encoders import batch_to, set_blocks
from sne.errors import SneError, one_line
from sne.io_utils import write_json_atomic
from sne.train.run import hardware_description, load_run
from sne.zoo import Zoo

#: Validation loss (normalised MSE) below which a run counts as having left the mean predictor (1.0).
LEFT_THE_MEAN = 0.9


def block_sharpness(run_dir: Path, networks: int) -> dict:
    """Per attention block: mean over heads and queries of the logits' standard deviation and of
    the attention weights' entropy divided by log(number of keys) (1: uniform, 0: one key)."""
    run = load_run(run_dir, device="cpu", which="last")
    predictor = run.predictor.eval()
    zoo = Zoo.open(run.config.zoo)
    records = zoo.records(zoo.split_ids("train")[:networks])
    spreads, entropies = defaultdict(list), defaultdict(list)
    current = [None]
    attend = set_blocks.F.scaled_dot_product_attention

    def measured(q, k, v, attn_mask=None, **kwargs):
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        keys = torch.full(logits.shape[:-1], float(k.shape[-2]))
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
            keys = attn_mask.sum(-1).float().expand(logits.shape[:-1])
        weights = logits.softmax(-1)
        entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)
        real = keys > 1  # one key: nothing to choose between
        centred = logits.masked_fill(~torch.isfinite(logits), float("nan"))
        spread = (centred - centred.nanmean(-1, keepdim=True)).pow(2).nanmean(-1).sqrt()
        spreads[current[0]].append(spread[real])
        entropies[current[0]].append((entropy / keys.log())[real])
        return attend(q, k, v, attn_mask=attn_mask, **kwargs)

    hooks = [module.register_forward_pre_hook(lambda _m, _a, name=name: current.__setitem__(0, name))
             for name, module in predictor.encoder.named_modules() if isinstance(module, set_blocks.MAB)]
    set_blocks.F.scaled_dot_product_attention = measured
    try:
        with torch.no_grad():
            predictor.encoder(batch_to(predictor.encoder.prepare(records), torch.device("cpu")))
    finally:
        set_blocks.F.scaled_dot_product_attention = attend
        for hook in hooks:
            hook.remove()
    history = run.meta["state"]["history"]  # last.pt carries the run's history.json too
    left = next((row["epoch"] for row in history if row["val_loss"] < LEFT_THE_MEAN), None)
    config = run.config
    return {
        "run": str(run_dir),
        "zoo": config.zoo,
        "seed": config.seed,
        "lr": config.lr,
        "schedule": config.schedule,
        "warmup_epochs": config.warmup_epochs,
        "encoder_options": config.encoder_options,
        "epochs": len(history),
        "best_val_loss": min((row["val_loss"] for row in history), default=None),
        "left_the_mean_at_epoch": left,
        "networks": len(records),
        "blocks": [{"block": name, "logit_std": float(torch.cat(spreads[name]).mean()),
                    "relative_entropy": float(torch.cat(entropies[name]).mean())}
                   for name in spreads if torch.cat(spreads[name]).numel()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="SNE run directories (sne train --out, sne bench --runs)")
    parser.add_argument("--out", type=Path, required=True, help="results file to write")
    parser.add_argument("--networks", type=int, default=64, help="training networks of each run's zoo to encode")
    args = parser.parse_args()
    if args.networks < 1:
        parser.error(f"--networks must be at least 1, got {args.networks}")
    try:
        rows = [block_sharpness(run, args.networks) for run in args.runs]
    except (SneError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, {
        "benchmark": "attention_logits",
        "command": "python " + shlex.join(["scripts/attention_logits.py", *sys.argv[1:]]),
        "hardware": hardware_description(torch.device("cpu")),
        "left_the_mean_below_val_loss": LEFT_THE_MEAN,
        "runs": rows,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
