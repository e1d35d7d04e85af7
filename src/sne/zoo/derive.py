"""Derived zoos: a zoo's networks put through a seeded weight transform, everything else kept.

A derived zoo keeps its source's recipe, options, seed, split fractions, targets and metadata, so
its splits and targets equal the source's network by network; its manifest options gain
``variant`` (the transform's name) and ``variant_seed``, so results on it never merge with results
on the source (:func:`sne.bench.results.zoo_identity`). Used for input ablations: train the same
encoder on both zoos and the difference is what the transform destroyed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from sne.errors import SneError
from sne.weights.permute import shuffle_incoming
from sne.weights.record import NetworkRecord
from sne.zoo.format import Zoo, split_assignment, write_zoo
from sne.zoo.recipes import derive_seed

#: name -> transform(record, generator) -> record of the same architecture.
ZOO_TRANSFORMS: dict[str, Callable[[NetworkRecord, torch.Generator], NetworkRecord]] = {
    "shuffle-incoming": shuffle_incoming,
}


def derive_zoo(source: str | Path, out: str | Path, transform: str, seed: int = 0, command: str = "") -> Zoo:
    """Write the zoo at ``source`` with ``transform`` applied to every network (network ``i`` with a
    generator seeded by ``(seed, i)``) as a new zoo at ``out``; return it."""
    if transform not in ZOO_TRANSFORMS:
        raise SneError(f"unknown zoo transform '{transform}' (available: {', '.join(sorted(ZOO_TRANSFORMS))})")
    zoo = Zoo.open(source)
    manifest = zoo.manifest
    if manifest.get("options", {}).get("variant"):
        raise SneError(f"the zoo at {zoo.path} is already derived ({manifest['options']['variant']}); derive from its source")
    # write_zoo assigns splits from (n, seed, fractions) as generation did; with no diverged network
    # that reproduces the source's splits exactly, which the comparison between the two zoos needs.
    splits = split_assignment(len(zoo), manifest["seed"], manifest["split_fractions"])
    if manifest.get("diverged") or not (zoo.metadata["split"].to_numpy() == splits).all():
        raise SneError(f"the zoo at {zoo.path} has diverged or re-assigned networks: its splits cannot be kept")
    apply = ZOO_TRANSFORMS[transform]
    stacked: dict[str, list[torch.Tensor]] = {}
    for network_id in range(len(zoo)):
        generator = torch.Generator().manual_seed(derive_seed(seed, transform, network_id))
        for layer in apply(zoo.records([network_id])[0], generator).layers:
            stacked.setdefault(f"{layer.name}.weight", []).append(layer.weight)
            if layer.bias is not None:
                stacked.setdefault(f"{layer.name}.bias", []).append(layer.bias)
    rows = zoo.metadata.drop(columns=["id", "split"]).to_dict("records")
    return write_zoo(
        out, recipe=manifest["recipe"], options={**manifest["options"], "variant": transform, "variant_seed": seed},
        architecture=zoo.architecture, targets=manifest["targets"],
        dataset={**manifest.get("dataset", {}), "derived_from": {"path": str(zoo.path), "command": zoo.command}},
        tensors={key: torch.stack(values) for key, values in stacked.items()}, rows=rows, seed=manifest["seed"],
        command=command, split_fractions=manifest["split_fractions"], shard_size=manifest["shard_size"],
    )
