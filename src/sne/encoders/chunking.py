"""Pad-chunking: turn a batch of network records into the flat index tensors SNE runs on.

**Elements.** A layer's weight of shape ``(out, in, *kernel)`` is viewed as ``out * in`` elements;
an element is the set of its kernel taps (a linear weight has one tap), each tap a value at a
coordinate in ``[-1, 1]`` per kernel dimension. Element features therefore do not depend on the
kernel size, and no maximum kernel size exists. A bias is an element with one tap.

**Chunks.** Weights and biases of a layer are chunked separately (its two *parts*). Chunking keeps
a neuron's weights together: row ``o`` of the ``(out, in)`` element grid holds output neuron ``o``'s
incoming elements. If ``in <= c``, ``c // in`` whole rows share a chunk (its tail is padded); if
``in > c``, each row is split into ``ceil(in / c)`` chunks of its own (the last one padded). A bias
part is a grid of ``out`` rows of one element, so up to ``c`` biases share a chunk.

**Order information kept (a deliberate decision).** As pure sets, chunks ``[1 2 3 | 4 5 6]`` and
``[4 5 6 | 1 2 3]`` look alike, and so do ``[1 2 | 3 4]`` and ``[1 3 | 2 4]`` (the same values grouped
into different neurons). The encoder receives, per element, its *row slot* (which row of its
chunk it belongs to: which elements share a neuron, which the function of the network depends
on) and, per chunk, its *chunk index* within its part (the order of a layer's neurons). It never
receives the order of a neuron's incoming elements within a row, the arbitrary order of the
previous layer's neurons. Neuron order is a symmetry of the network too, which is why both
encodings can be switched off in :class:`sne.encoders.sne.SNEEncoder`; tap coordinates are not a
symmetry and are always kept.

**Source neurons (optional).** What a row-as-set loses is the link between layers: which neuron
of the previous layer each incoming weight comes from. With ``source_features=True`` every weight
element also carries :data:`SOURCE_FEATURES` numbers describing that neuron (its standardised bias,
the root mean square of its standardised incoming weights, and a flag that a source is known).
They travel with the weight, so a permutation of the previous layer's neurons moves each feature
with its weight: the link is kept without keeping the arbitrary neuron order. First layers (whose
inputs are the network's), biases, and layers after a skip connection get zeros.

**Input positions (optional).** The first layer's inputs are the network's own inputs (an INR's
x and y, an image's channels): their order is not a symmetry, yet a row-as-set drops it, so a 2-D
INR's x- and y-weights look alike. With ``input_positions=True`` every weight element of the first
layer carries its input's coordinate in ``[-1, 1]`` (spaced as kernel taps are, so any number of
inputs fits) and a flag; every other element gets zeros (:data:`INPUT_POSITION_FEATURES`).

**Scale.** Weights of different layers differ in scale by orders of magnitude (a SIREN's first
layer ~0.5, its hidden layer ~0.015), and differences between networks are smaller still, so raw
values would drown under the positional encodings. With ``standardize=True`` each part's values
are standardised by that part's own mean and standard deviation, and the two statistics travel
beside them as ``part_stats`` (mean, log std): nothing is lost, and every layer arrives at unit
scale whatever the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch

from sne.errors import SneError
from sne.weights.permute import input_blocks
from sne.weights.record import LAYER_KINDS, Layer, NetworkRecord

#: Index of the weight and bias part of a layer; also the second factor of a chunk's type.
WEIGHT_PART, BIAS_PART = 0, 1
#: Number of distinct chunk types: every layer kind, as weight or as bias.
NUM_CHUNK_TYPES = 2 * len(LAYER_KINDS)
#: Features of an incoming weight's source neuron: standardised bias, rms of standardised incoming
#: weights, and 1 where the source is known (see "Source neurons" above).
SOURCE_FEATURES = 3
#: Features of a first-layer weight's input: its coordinate in [-1, 1], and 1 marking a first-layer
#: weight (see "Input positions" above).
INPUT_POSITION_FEATURES = 2


class RowChunkLayout(NamedTuple):
    """Where each element of a row-major ``(rows, row_length)`` grid goes in its part's chunks."""

    num_chunks: int
    slot: torch.Tensor  #: (rows * row_length,) chunk * chunk_size + position in the chunk
    row_slot: torch.Tensor  #: (rows * row_length,) which row of its chunk the element belongs to


@lru_cache(maxsize=4096)
def row_chunk_layout(rows: int, row_length: int, chunk_size: int) -> RowChunkLayout:
    """Chunk a grid of elements row by row, never mixing part of one row with another row."""
    row = torch.arange(rows).repeat_interleave(row_length)
    column = torch.arange(row_length).repeat(rows)
    if row_length <= chunk_size:
        rows_per_chunk = chunk_size // row_length
        chunk = row // rows_per_chunk
        row_slot = row % rows_per_chunk
        position = row_slot * row_length + column
        num_chunks = -(-rows // rows_per_chunk)
    else:
        chunks_per_row = -(-row_length // chunk_size)
        chunk = row * chunks_per_row + column // chunk_size
        row_slot = torch.zeros_like(row)
        position = column % chunk_size
        num_chunks = rows * chunks_per_row
    return RowChunkLayout(num_chunks, chunk * chunk_size + position, row_slot)


@lru_cache(maxsize=256)
def kernel_coordinates(kernel_shape: tuple[int, ...]) -> torch.Tensor:
    """Coordinates in ``[-1, 1]`` of a kernel's taps, ``(taps, len(kernel_shape))``, row-major.

    A dimension of size 1 sits at 0; a linear "kernel" ``()`` is one tap without coordinates.
    """
    if not kernel_shape:
        return torch.zeros(1, 0)
    axes = [torch.linspace(-1.0, 1.0, k) if k > 1 else torch.zeros(1) for k in kernel_shape]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, len(kernel_shape))


@dataclass
class ChunkBatch:
    """A batch of networks as SNE's input: element taps plus the index tensors of the hierarchy.

    Sizes: ``E`` elements, ``N`` chunks of ``c`` slots, ``P`` parts (a layer's weight or bias) of at
    most ``C`` chunks, ``L`` layers, ``B`` networks of at most ``M`` layers and ``K`` chunks.
    A *slot* index ``i * width + j`` addresses row ``i``, column ``j`` of a padded ``(rows, width)``
    tensor, so padding is a ``zeros(...).index_copy(0, slot, values)`` away.
    """

    tap_values: list[torch.Tensor]  #: per kernel shape, (elements, taps)
    tap_coordinates: list[torch.Tensor]  #: per kernel shape, (taps, kernel ndim)
    element_slot: list[torch.Tensor]  #: per kernel shape, (elements,) slot in (N, c), increasing
    element_mask: torch.Tensor  #: (N, c) True for real elements
    row_slot: torch.Tensor  #: (N, c) row of its chunk each element belongs to
    chunk_type: torch.Tensor  #: (N,) 2 * layer kind index + part
    chunk_level: torch.Tensor  #: (N,) level of the chunk's layer
    chunk_index: torch.Tensor  #: (N,) index of the chunk within its part
    chunk_part_slot: torch.Tensor  #: (N,) slot in (P, C)
    part_mask: torch.Tensor  #: (P, C)
    part_layer_slot: torch.Tensor  #: (P,) slot in (L, 2): column 0 weight, 1 bias
    layer_mask: torch.Tensor  #: (L, 2)
    layer_level: torch.Tensor  #: (L,)
    layer_network_slot: torch.Tensor  #: (L,) slot in (B, M)
    network_mask: torch.Tensor  #: (B, M)
    chunk_network_slot: torch.Tensor  #: (N,) slot in (B, K), for the encoder without hierarchy
    network_chunk_mask: torch.Tensor  #: (B, K)
    chunk_part: torch.Tensor  #: (N,) part each chunk belongs to
    part_stats: torch.Tensor  #: (P, 2) mean and log standard deviation of each part's raw values
    #: per kernel shape, (elements, SOURCE_FEATURES), when pad_chunk was asked for source features
    source_features: list[torch.Tensor] | None = None
    #: per kernel shape, (elements, INPUT_POSITION_FEATURES), when pad_chunk was asked for input positions
    input_positions: list[torch.Tensor] | None = None


def _padding_mask(lengths: torch.Tensor) -> torch.Tensor:
    """(len(lengths), max length) mask of the first ``lengths[i]`` places of row ``i``."""
    return torch.arange(int(lengths.max())) < lengths[:, None]


def _slots(rows: torch.Tensor, columns: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Slots of (row, column) pairs in the padded tensor that :func:`_padding_mask` describes."""
    return rows * int(lengths.max()) + columns


#: Floor of a part's standard deviation, so constant parts (a single bias) standardise to 0.
STD_FLOOR = 1e-6


class LayerPart(NamedTuple):
    """A layer's weight or bias as a grid of elements: ``out_features`` rows of ``row_length``."""

    part: int  #: WEIGHT_PART or BIAS_PART
    type: int  #: 2 * layer kind index + part
    kernel: tuple[int, ...]
    taps: torch.Tensor  #: (rows * row_length, taps) in float64
    row_length: int
    mean: torch.Tensor  #: mean of all values
    std: torch.Tensor  #: standard deviation of all values, floored at STD_FLOOR

    @property
    def stats(self) -> torch.Tensor:
        """(mean, log std), what the encoder is told about a standardised part."""
        return torch.stack([self.mean, self.std.log()])


def layer_parts(layer: Layer, source: str) -> list[LayerPart]:
    """The weight part and (when present) the bias part of ``layer``."""
    if layer.weight.numel() == 0:
        raise SneError(f"{source}: layer '{layer.name}' has an empty weight {tuple(layer.weight.shape)}")
    kind = LAYER_KINDS.index(layer.kind)
    grids = [(WEIGHT_PART, layer.kernel_shape, layer.weight.reshape(layer.out_features * layer.in_features, -1),
              layer.in_features)]
    if layer.bias is not None:
        grids.append((BIAS_PART, (), layer.bias.reshape(layer.out_features, 1), 1))
    parts = []
    for part, kernel, taps, row_length in grids:
        taps = taps.to(torch.float64)
        std = taps.std(unbiased=False).clamp_min(STD_FLOOR)
        parts.append(LayerPart(part, 2 * kind + part, kernel, taps, row_length, taps.mean(), std))
    return parts


def source_neuron_features(record: NetworkRecord) -> list[torch.Tensor | None]:
    """Per layer, ``(in_features, SOURCE_FEATURES)``: the features of the neuron each input of the
    layer comes from (a flattened channel feeds a block of inputs), or ``None`` where unknown."""
    features: list[torch.Tensor | None] = [None]
    for previous, layer in zip(record.layers, record.layers[1:]):
        try:
            block = input_blocks(previous, layer, record.source)
        except SneError:
            block = None
        if block is None or layer.skip_from:
            features.append(None)
            continue
        # Standardised as the chunks standardise each part (layer_parts: the part's own mean and std).
        weight, *bias = [
            ((part.taps - part.mean) / part.std).reshape(previous.out_features, -1)
            for part in layer_parts(previous, record.source)
        ]
        bias = bias[0].squeeze(1) if bias else weight.new_zeros(previous.out_features)
        neuron = torch.stack([bias, weight.square().mean(1).sqrt(), torch.ones_like(bias)], dim=1)
        features.append(neuron.repeat_interleave(block, dim=0))
    return features


def input_position_features(layer: Layer) -> torch.Tensor:
    """``(out_features * in_features, INPUT_POSITION_FEATURES)``: for each weight element of a
    network's first layer, in row-major order, its input's coordinate and a flag of 1."""
    coordinate = kernel_coordinates((layer.in_features,)).squeeze(1).repeat(layer.out_features)
    return torch.stack([coordinate, torch.ones_like(coordinate)], dim=1)


def pad_chunk(
    records: Sequence[NetworkRecord], chunk_size: int, dtype: torch.dtype = torch.float32, standardize: bool = False,
    source_features: bool = False, input_positions: bool = False,
) -> ChunkBatch:
    """Chunk every part of every layer of ``records`` (see the module docstring)."""
    if not records:
        raise SneError("cannot encode an empty batch of networks")
    taps_by_kernel: dict[tuple[int, ...], list[torch.Tensor]] = {}
    slots_by_kernel: dict[tuple[int, ...], list[torch.Tensor]] = {}
    row_slots_by_kernel: dict[tuple[int, ...], list[torch.Tensor]] = {}
    sources_by_kernel: dict[tuple[int, ...], list[torch.Tensor]] = {}
    positions_by_kernel: dict[tuple[int, ...], list[torch.Tensor]] = {}
    part_type, part_level, part_network, part_lengths, part_layer_slot = [], [], [], [], []
    layer_level, layers_per_network, part_stats = [], [], []
    num_chunks = 0
    for network, record in enumerate(records):
        sources = source_neuron_features(record) if source_features else [None] * len(record.layers)
        for index, (layer, layer_sources) in enumerate(zip(record.layers, sources)):
            for part in layer_parts(layer, record.source):
                elements = layer.out_features * part.row_length
                if input_positions:
                    if index == 0 and part.part == WEIGHT_PART:
                        positions = input_position_features(layer)
                    else:
                        positions = torch.zeros(elements, INPUT_POSITION_FEATURES)
                    positions_by_kernel.setdefault(part.kernel, []).append(positions.to(dtype))
                if source_features:
                    if part.part == WEIGHT_PART and layer_sources is not None:
                        element_sources = layer_sources.repeat(layer.out_features, 1)
                    else:
                        element_sources = torch.zeros(elements, SOURCE_FEATURES)
                    sources_by_kernel.setdefault(part.kernel, []).append(element_sources.to(dtype))
                layout = row_chunk_layout(layer.out_features, part.row_length, chunk_size)
                part_stats.append(part.stats)
                taps = (part.taps - part.mean) / part.std if standardize else part.taps
                taps_by_kernel.setdefault(part.kernel, []).append(taps.to(dtype))
                slots_by_kernel.setdefault(part.kernel, []).append(layout.slot + num_chunks * chunk_size)
                row_slots_by_kernel.setdefault(part.kernel, []).append(layout.row_slot)
                part_type.append(part.type)
                part_level.append(layer.level)
                part_network.append(network)
                part_lengths.append(layout.num_chunks)
                part_layer_slot.append(2 * len(layer_level) + part.part)
                num_chunks += layout.num_chunks
            layer_level.append(layer.level)
        layers_per_network.append(len(record.layers))

    kernels = list(taps_by_kernel)
    element_slot = [torch.cat(slots_by_kernel[k]) for k in kernels]
    flat_row_slot = torch.zeros(num_chunks * chunk_size, dtype=torch.long)
    flat_mask = torch.zeros(num_chunks * chunk_size, dtype=torch.bool)
    for kernel, slots in zip(kernels, element_slot):
        flat_row_slot[slots] = torch.cat(row_slots_by_kernel[kernel])
        flat_mask[slots] = True

    # Chunks, parts and layers are numbered in record order, so each one's index within its
    # parent is its global index minus the parent's first.
    lengths = torch.tensor(part_lengths)
    chunk_part = torch.repeat_interleave(lengths)
    chunk_index = torch.arange(num_chunks) - (lengths.cumsum(0) - lengths)[chunk_part]
    chunk_network = torch.tensor(part_network)[chunk_part]
    chunks_per_network = torch.bincount(chunk_network, minlength=len(records))
    chunk_in_network = torch.arange(num_chunks) - (chunks_per_network.cumsum(0) - chunks_per_network)[chunk_network]
    layer_counts = torch.tensor(layers_per_network)
    layer_network = torch.repeat_interleave(layer_counts)
    layer_in_network = torch.arange(len(layer_level)) - (layer_counts.cumsum(0) - layer_counts)[layer_network]
    layer_mask = torch.zeros(len(layer_level) * 2, dtype=torch.bool)
    layer_mask[torch.tensor(part_layer_slot)] = True

    return ChunkBatch(
        tap_values=[torch.cat(taps_by_kernel[k]) for k in kernels],
        tap_coordinates=[kernel_coordinates(k).to(dtype) for k in kernels],
        element_slot=element_slot,
        element_mask=flat_mask.view(num_chunks, chunk_size),
        row_slot=flat_row_slot.view(num_chunks, chunk_size),
        chunk_type=torch.tensor(part_type)[chunk_part],
        chunk_level=torch.tensor(part_level)[chunk_part],
        chunk_index=chunk_index,
        chunk_part_slot=_slots(chunk_part, chunk_index, lengths),
        part_mask=_padding_mask(lengths),
        part_layer_slot=torch.tensor(part_layer_slot),
        layer_mask=layer_mask.view(-1, 2),
        layer_level=torch.tensor(layer_level),
        layer_network_slot=_slots(layer_network, layer_in_network, layer_counts),
        network_mask=_padding_mask(layer_counts),
        chunk_network_slot=_slots(chunk_network, chunk_in_network, chunks_per_network),
        network_chunk_mask=_padding_mask(chunks_per_network),
        chunk_part=chunk_part,
        part_stats=torch.stack(part_stats).to(dtype),
        source_features=[torch.cat(sources_by_kernel[k]) for k in kernels] if source_features else None,
        input_positions=[torch.cat(positions_by_kernel[k]) for k in kernels] if input_positions else None,
    )
