"""Functionally-equivalent permutations of a network's neurons.

A record's symmetries are :class:`~sne.weights.record.PermutationGroup` s: sets of tensor axes
that one permutation reorders together. A traced module brings its own (hidden channels with their
normalisation statistics, residual streams, attention heads, ...; :mod:`sne.weights.trace`). A plain
chain of dense layers needs none: permuting the outputs of layer i (rows of its weight and bias) and,
identically, the inputs of layer i+1 leaves its function unchanged, because activations, pooling
and flattening act on each neuron or channel alike.

Where a hidden neuron's activation is odd (f(-x) = -f(x): sine, tanh), negating its incoming
weights, its bias and its outgoing weights is a further equivalence (:func:`random_sign_flips`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from sne.errors import SneError
from sne.weights.record import Layer, Member, NetworkRecord, PermutationGroup


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
    if not record.is_chain:
        odd = next(l for l in record.layers if l.kind not in ("linear", "conv1d", "conv2d", "conv3d")
                   or l.attrs.get("groups", 1) != 1 or l.inputs is not None)
        raise SneError(f"{record.source}: not a plain chain of dense layers (layer '{odd.name}', {odd.kind})")
    return [input_blocks(a, b, record.source) for a, b in zip(record.layers, record.layers[1:])]


def chain_groups(record: NetworkRecord) -> tuple[PermutationGroup, ...]:
    """The symmetries of a plain chain: each hidden layer's outputs, with the batch norms after it
    (a bare state_dict's) and the next layer's inputs."""
    norms = [i for i, l in enumerate(record.layers) if l.kind == "batch_norm"]
    if not norms:
        blocks = _check_chain(record)
        dense = list(range(len(record.layers)))
    else:
        dense = [i for i, l in enumerate(record.layers) if l.kind != "batch_norm"]
        if norms[0] == 0 or norms[-1] == len(record.layers) - 1:
            raise SneError(f"{record.source}: a batch norm at either end of a chain cannot be permuted")
        blocks = _check_chain(record.with_layers(record.layers[i] for i in dense))
    groups = []
    for position, (i, block) in enumerate(zip(dense, blocks)):
        layer, following = record.layers[i], dense[position + 1]
        members = [Member(i, layer.weight_name, 0)]
        if layer.bias is not None:
            members.append(Member(i, "bias", 0))
        for norm in range(i + 1, following):
            members += [Member(norm, name, 0) for name, t in record.layers[norm].tensors.items() if t.dim() == 1]
        members.append(Member(following, record.layers[following].weight_name, 1, 0, block))
        groups.append(PermutationGroup(layer.out_features, tuple(members), f"outputs of '{layer.name}'"))
    return tuple(groups)


def symmetry_groups(record: NetworkRecord) -> tuple[PermutationGroup, ...]:
    """The neuron permutations that leave ``record``'s function unchanged: those its source recorded
    (a traced module's), else those of a plain chain; :class:`SneError` if neither is known."""
    return record.symmetries if record.symmetries is not None else chain_groups(record)


def supports_permutation(record: NetworkRecord) -> bool:
    """Whether the symmetries of ``record`` are known (a traced module, or a plain chain of fitting layers)."""
    try:
        symmetry_groups(record)
    except SneError:
        return False
    return True


def _check_perm(perm: torch.Tensor, size: int, what: str, source: str) -> torch.Tensor:
    if (
        not isinstance(perm, torch.Tensor)
        or perm.dim() != 1
        or perm.dtype.is_floating_point
        or perm.numel() != size
        or not torch.equal(perm.sort().values.cpu(), torch.arange(size))
    ):
        raise SneError(f"{source}: the permutation for {what} is not a permutation of {size} indices")
    return perm.to(dtype=torch.long)


def apply_permutations(
    record: NetworkRecord, groups: Sequence[PermutationGroup], perms: Sequence[torch.Tensor | None]
) -> NetworkRecord:
    """Reorder every member of ``groups[g]`` by ``perms[g]`` (``None``: leave it): new neuron r is old
    neuron ``perms[g][r]``. Returns a new record with the same source, activations, flow and meta."""
    if len(perms) != len(groups):
        raise SneError(f"{record.source}: {len(perms)} permutations given for {len(groups)} groups")
    tensors = [dict(layer.tensors) for layer in record.layers]
    for group, perm in zip(groups, perms):
        if perm is None:
            continue
        perm = _check_perm(perm, group.size, group.name or "a group", record.source)
        for member in group.members:
            tensor = tensors[member.layer][member.tensor]
            length = tensor.shape[member.axis]
            moved = (perm.unsqueeze(1) * member.inner + torch.arange(member.inner)).reshape(-1) + member.offset
            index = torch.arange(length)
            index[member.offset : member.offset + group.size * member.inner] = moved
            tensors[member.layer][member.tensor] = tensor.index_select(member.axis, index.to(tensor.device))
    return record.with_layers(replace(layer, tensors=t) for layer, t in zip(record.layers, tensors))


def permute_hidden(record: NetworkRecord, perms: Sequence[torch.Tensor | None]) -> NetworkRecord:
    """Reorder the outputs of layer i of a plain chain by ``perms[i]`` (``None`` leaves them) and the
    next layer's inputs alike.

    New neuron r of layer i is old neuron ``perms[i][r]``. ``perms`` has one entry per layer, or
    one per hidden layer; the last layer's outputs are the network's and are never permuted.
    """
    layers = record.layers
    groups = chain_groups(record)
    if len(perms) not in (len(layers), len(layers) - 1):
        raise SneError(
            f"{record.source}: {len(perms)} permutations given for {len(layers)} layers "
            f"(expected {len(layers) - 1} or {len(layers)})"
        )
    if len(perms) == len(layers) and perms[-1] is not None:
        raise SneError(f"{record.source}: the outputs of the last layer '{layers[-1].name}' cannot be permuted")
    for i, perm in enumerate(perms[: len(groups)]):
        if perm is not None:
            _check_perm(perm, groups[i].size, f"layer '{layers[i].name}'", record.source)
    return apply_permutations(record, groups, list(perms[: len(groups)]))


def random_permutations(record: NetworkRecord, generator: torch.Generator) -> list[torch.Tensor | None]:
    """A uniformly random permutation for every hidden layer of a plain chain, and ``None`` for the last."""
    hidden = [torch.randperm(group.size, generator=generator) for group in chain_groups(record)]
    return [*hidden, None]


def random_equivalent_permutation(record: NetworkRecord, generator: torch.Generator) -> NetworkRecord:
    """A functionally-equivalent copy of ``record``: every symmetry group (:func:`symmetry_groups`:
    hidden units and channels, residual streams, attention heads and the dimensions within them, ...)
    gets a uniformly random permutation."""
    groups = symmetry_groups(record)
    return apply_permutations(record, groups, [torch.randperm(g.size, generator=generator) for g in groups])


#: Activations f with f(-x) = -f(x): a neuron followed by one may have its sign flipped.
ODD_ACTIVATIONS = frozenset({"sine", "tanh"})


def sign_flip_groups(record: NetworkRecord) -> tuple[PermutationGroup, ...]:
    """The hidden layers whose neurons' signs can be flipped without changing the function: in a
    chain of linear layers (an MLP or INR; convolutions are left out, since max pooling between them
    is not odd and a record may not say whether it is there), every hidden layer whose activation is
    known and odd. Each group's members are that layer's rows and bias and the next layer's columns."""
    if not record.is_chain or any(layer.kind != "linear" for layer in record.layers):
        return ()
    return tuple(group for layer, group in zip(record.layers, chain_groups(record))
                 if layer.activation in ODD_ACTIVATIONS)


def supports_sign_flips(record: NetworkRecord) -> bool:
    """Whether some hidden neuron of ``record`` can have its sign flipped (:func:`sign_flip_groups`)."""
    return bool(sign_flip_groups(record))


def flip_signs(record: NetworkRecord, signs: Sequence[torch.Tensor]) -> NetworkRecord:
    """Multiply every member of ``sign_flip_groups(record)[g]`` by ``signs[g]`` (one +1 or -1 per neuron)."""
    groups = sign_flip_groups(record)
    if len(signs) != len(groups):
        raise SneError(f"{record.source}: {len(signs)} sign vectors given for {len(groups)} flippable layers")
    tensors = [dict(layer.tensors) for layer in record.layers]
    for group, sign in zip(groups, signs):
        if sign.shape != (group.size,) or not bool(((sign == 1) | (sign == -1)).all()):
            raise SneError(f"{record.source}: the signs for {group.name} are not {group.size} values of +1 or -1")
        for member in group.members:
            tensor = tensors[member.layer][member.tensor]
            factor = torch.ones(tensor.shape[member.axis], dtype=tensor.dtype, device=tensor.device)
            factor[member.offset : member.offset + group.size * member.inner] = sign.to(tensor).repeat_interleave(member.inner)
            shape = [1] * tensor.dim()
            shape[member.axis] = -1
            tensors[member.layer][member.tensor] = tensor * factor.reshape(shape)
    return record.with_layers(replace(layer, tensors=t) for layer, t in zip(record.layers, tensors))


def random_sign_flips(record: NetworkRecord, generator: torch.Generator) -> NetworkRecord:
    """A functionally-equivalent copy of ``record`` in which each neuron of :func:`sign_flip_groups`
    has its sign flipped with probability 1/2 (``record`` itself where there is none)."""
    groups = sign_flip_groups(record)
    if not groups:
        return record
    return flip_signs(record, [torch.randint(0, 2, (g.size,), generator=generator) * 2 - 1 for g in groups])


def sign_alignment(records: Sequence[NetworkRecord], sample: int = 64) -> float | None:
    """How much of the flippable parameters (:func:`sign_flip_groups`) networks have in common, in
    their own signs: per architecture, over up to ``sample`` networks spread over ``records``, the
    squared norm of their mean over the mean of their squared norms, ``1/n`` (no alignment: what
    networks initialised independently give, signs being random) rescaled to 0 and 1 (all equal) kept.

    Networks fitted from one shared initialisation score near 1; a random sign flip then makes one
    unlike any of them. Weighted by networks over architectures; ``None`` where no architecture has
    two networks with flippable neurons."""
    vectors: dict[tuple, list[torch.Tensor]] = {}
    for record in list(records)[:: max(1, len(records) // sample)][:sample]:
        parts = [record.layers[m.layer].tensors[m.tensor].detach().narrow(m.axis, m.offset, g.size * m.inner)
                 for g in sign_flip_groups(record) for m in g.members]
        if parts:
            vectors.setdefault(tuple(p.shape for p in parts), []).append(
                torch.cat([p.reshape(-1).double().cpu() for p in parts]))
    scores, weights = [], []
    for group in vectors.values():
        if len(group) < 2:
            continue
        stacked = torch.stack(group)
        energy = float(stacked.square().sum(1).mean())
        if energy == 0:
            continue
        ratio = float(stacked.mean(0).square().sum()) / energy
        scores.append(max(0.0, (ratio - 1 / len(group)) / (1 - 1 / len(group))))
        weights.append(len(group))
    if not scores:
        return None
    return sum(s * w for s, w in zip(scores, weights)) / sum(weights)


def canonical_signs(record: NetworkRecord) -> list[torch.Tensor]:
    """Signs for :func:`flip_signs` that give every neuron of :func:`sign_flip_groups` incoming
    weights whose cubes sum to a non-negative number.

    Flipping a neuron negates that sum, so every sign-flipped copy of ``record`` gets the same
    canonical form, exactly (negation is exact in floating point), up to sums of exactly 0 (kept).
    The cube lets a neuron's largest weights decide and keeps the key continuous in the weights.
    Layers are settled in order: a neuron's incoming weights carry the signs of the neurons
    before it, so those are fixed first.
    """
    return _settle_signs(record)[0]


def canonicalize_signs(record: NetworkRecord) -> NetworkRecord:
    """The functionally-equivalent copy of ``record`` with :func:`canonical_signs` (``record`` itself
    where no neuron can be flipped)."""
    return _settle_signs(record)[1]


def _settle_signs(record: NetworkRecord) -> tuple[list[torch.Tensor], NetworkRecord]:
    """:func:`canonical_signs` and ``record`` flipped by them, which settling the layers makes anyway."""
    groups = sign_flip_groups(record)
    signs = [torch.ones(group.size, dtype=torch.long) for group in groups]
    settled = record
    for g, group in enumerate(groups):
        rows = group.members[0]  # the layer's own weight rows (sign_flip_groups: chains of linear layers)
        weight = settled.layers[rows.layer].tensors[rows.tensor].detach()
        key = weight.reshape(group.size, -1).double().pow(3).sum(1).cpu()
        signs[g] = torch.where(key < 0, -1, 1)
        settled = flip_signs(record, signs)
    return signs, settled


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
    _check_chain(record)
    layers = []
    for layer in record.layers:
        rows, inputs = layer.weight.shape[0], layer.weight.shape[1]
        order = torch.rand(rows, inputs, generator=generator).argsort(dim=1).to(layer.weight.device)
        index = order.reshape(rows, inputs, *([1] * (layer.weight.dim() - 2))).expand_as(layer.weight)
        layers.append(layer.with_tensors(weight=layer.weight.gather(1, index)))
    return record.with_layers(layers)
