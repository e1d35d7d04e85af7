"""Functionally-equivalent permutations of hidden neurons and channels of a chain of layers.

Permuting the outputs of layer i (rows of its weight and bias) and, identically, the inputs of
layer i+1 leaves the network's function unchanged, because activations, pooling and flattening act
on each neuron or channel alike. Records carry no computation graph, so the layers are taken to form
a plain chain; records with skip connections are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from sne.errors import SneError
from sne.weights.record import Layer, NetworkRecord


def input_blocks(layer: Layer, following: Layer, source: str) -> int:
    """How many input features of ``following`` each output of ``layer`` feeds (1, or k after Flatten)."""
    channels, inputs = layer.out_features, following.in_features
    if inputs == channels:
        return 1
    # nn.Flatten of a (C, *spatial) map is channel-major: each channel owns a block of k inputs.
    if layer.kind != "linear" and following.kind == "linear" and inputs % channels == 0:
        return inputs // channels
    raise SneError(
        f"{source}: layers '{layer.name}' ({channels} outputs) and '{following.name}' ({inputs} inputs) "
        f"do not chain, so their neurons cannot be permuted"
    )


def _check_chain(record: NetworkRecord) -> list[int]:
    """The input block size of every layer after the first; raise if the record is not a plain chain."""
    skipping = [layer.name for layer in record.layers if layer.skip_from]
    if skipping:
        raise SneError(
            f"{record.source}: cannot permute a network with skip connections (into layer '{skipping[0]}')"
        )
    return [input_blocks(a, b, record.source) for a, b in zip(record.layers, record.layers[1:])]


def supports_permutation(record: NetworkRecord) -> bool:
    """Whether :func:`permute_hidden` can permute this record (a plain chain of fitting layers)."""
    try:
        _check_chain(record)
    except SneError:
        return False
    return True


def _check_perm(perm: torch.Tensor, layer: Layer, source: str) -> torch.Tensor:
    size = layer.out_features
    if (
        not isinstance(perm, torch.Tensor)
        or perm.dim() != 1
        or perm.dtype.is_floating_point
        or perm.numel() != size
        or not torch.equal(perm.sort().values.cpu(), torch.arange(size))
    ):
        raise SneError(f"{source}: the permutation for layer '{layer.name}' is not a permutation of {size} indices")
    return perm.to(device=layer.weight.device, dtype=torch.long)


def permute_hidden(record: NetworkRecord, perms: Sequence[torch.Tensor | None]) -> NetworkRecord:
    """Reorder the outputs of layer i by ``perms[i]`` (``None`` leaves them) and the next layer's inputs alike.

    New neuron r of layer i is old neuron ``perms[i][r]``. ``perms`` has one entry per layer, or
    one per hidden layer; the last layer's outputs are the network's and are never permuted.
    Returns a new record with the same source, activations and meta.
    """
    layers = record.layers
    blocks = _check_chain(record)
    if len(perms) not in (len(layers), len(layers) - 1):
        raise SneError(
            f"{record.source}: {len(perms)} permutations given for {len(layers)} layers "
            f"(expected {len(layers) - 1} or {len(layers)})"
        )
    if len(perms) == len(layers) and perms[-1] is not None:
        raise SneError(f"{record.source}: the outputs of the last layer '{layers[-1].name}' cannot be permuted")

    weights = [layer.weight for layer in layers]
    biases = [layer.bias for layer in layers]
    for i, perm in enumerate(perms[: len(layers) - 1]):
        if perm is None:
            continue
        perm = _check_perm(perm, layers[i], record.source)
        weights[i] = weights[i].index_select(0, perm)
        if biases[i] is not None:
            biases[i] = biases[i].index_select(0, perm)
        k = blocks[i]
        inputs = perm if k == 1 else (perm.unsqueeze(1) * k + torch.arange(k, device=perm.device)).reshape(-1)
        weights[i + 1] = weights[i + 1].index_select(1, inputs)
    return record.with_layers(replace(layer, weight=w, bias=b) for layer, w, b in zip(layers, weights, biases))


def random_permutations(record: NetworkRecord, generator: torch.Generator) -> list[torch.Tensor | None]:
    """A uniformly random permutation for every hidden layer, and ``None`` for the last layer."""
    _check_chain(record)
    hidden = [torch.randperm(layer.out_features, generator=generator) for layer in record.layers[:-1]]
    return [*hidden, None]


def random_equivalent_permutation(record: NetworkRecord, generator: torch.Generator) -> NetworkRecord:
    """A functionally-equivalent copy of ``record`` with every hidden layer randomly permuted."""
    return permute_hidden(record, random_permutations(record, generator))


def canonical_permutations(record: NetworkRecord) -> list[torch.Tensor | None]:
    """The permutations that sort every hidden layer's neurons by the norm of their parameters.

    A neuron's key is the Euclidean norm of its incoming weights (kernels included) and its bias.
    The norm ignores the order of a neuron's inputs, so all keys can be read off the record as it
    is, and two functionally-equivalent permutations of a network sort to the same network: the
    canonical form removes the permutation symmetry exactly, up to ties between keys (measure zero
    for trained weights; broken by the stable sort in the record's own order).
    """
    _check_chain(record)
    perms: list[torch.Tensor | None] = []
    for layer in record.layers[:-1]:
        key = layer.weight.detach().reshape(layer.out_features, -1).double().square().sum(1)
        if layer.bias is not None:
            key = key + layer.bias.detach().double().square()
        perms.append(torch.sort(key, stable=True).indices)
    return [*perms, None]


def canonicalize_hidden(record: NetworkRecord) -> NetworkRecord:
    """The functionally-equivalent copy of ``record`` in canonical neuron order (:func:`canonical_permutations`)."""
    return permute_hidden(record, canonical_permutations(record))


def shuffle_incoming(record: NetworkRecord, generator: torch.Generator) -> NetworkRecord:
    """A copy of ``record`` in which every neuron's incoming weights are shuffled among its own inputs.

    Each row of every layer's ``(out, in, *kernel)`` weight gets its own random permutation of the
    ``in`` axis (kernels move whole); biases stay. This is *not* a functional equivalence: it keeps
    each neuron's multiset of incoming weights and destroys which neuron of the previous layer each
    weight comes from, the cross-layer alignment that equivariant encoders read and that a
    row-as-set encoding (SNE's chunks) never sees. Used to measure what that alignment is worth.
    """
    layers = []
    for layer in record.layers:
        rows, inputs = layer.weight.shape[0], layer.weight.shape[1]
        order = torch.rand(rows, inputs, generator=generator).argsort(dim=1).to(layer.weight.device)
        index = order.reshape(rows, inputs, *([1] * (layer.weight.dim() - 2))).expand_as(layer.weight)
        layers.append(replace(layer, weight=layer.weight.gather(1, index)))
    return record.with_layers(layers)
