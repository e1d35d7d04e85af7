"""Pad-chunking: turn a batch of network records into the flat index tensors SNE runs on.

**Parts.** Every floating-point tensor of an operation is a *part* of its layer (an attention's
fused ``in_proj_weight`` and ``in_proj_bias`` are three parts each, one per projection, as the
paper proposes to treat attention projections as linear layers). Integer tensors (a batch norm's
``num_batches_tracked``) and operations of kind ``buffer`` carry no learned values and are skipped.
Each part is a grid of *rows* of *elements*; an element is the set of its kernel taps, each tap a
value at a coordinate in ``[-1, 1]`` per kernel dimension (one tap without coordinates outside
convolutions). Element features therefore do not depend on the kernel size, and no maximum kernel
size exists. Rows per tensor, so that a row is always one unit of the network (a neuron's
incoming weights, one token's vector, one value per channel):

=============================  ===============================================================
linear / convolution weight    ``(out, in / groups, *kernel)``: ``out`` rows of ``in / groups``
                               elements whose taps are the kernel (the first release's layout)
transposed convolution weight  stored ``(in, out / groups, *kernel)``; regrouped to
                               ``(out, in / groups, *kernel)`` so that, as for a convolution,
                               a row is an output channel's incoming kernels
embedding weight               ``(num_embeddings, dim)``: one row per token, ``dim`` elements.
                               The vocabulary axis is no symmetry and may be huge; the
                               embedding's symmetry (the residual stream) reorders values
                               within rows only, which whole rows in a chunk do not see
attention projections          q, k, v (rows of ``in_proj_weight``, or ``q/k/v_proj_weight``)
                               and ``out_proj.weight``: linear weights, one row per output
biases, normalisation scales,  one element per row (per channel), like the first release's
shifts and statistics          biases
free parameters                (kind ``parameter``, and any tensor whose role is not listed
                               here) 0-D and 1-D: one element per row, like a bias; more
                               dimensions: leading ones flattened into rows of the last
                               (``pos_embed`` ``(1, T, d)``: ``T`` rows of ``d``)
=============================  ===============================================================

**Chunk types.** A chunk's type is the (kind, tensor role) pair of its part, an index into
:data:`CHUNK_TYPES`. The first release's eight types keep their indices (``2 * kind`` for the
weight and ``2 * kind + 1`` for the bias of a linear / conv1d / conv2d / conv3d layer), so trained
encoders read chain records exactly as before; new types follow. On the sinusoidal axis that the
type and level encodings share (:func:`type_positions`), the first release's types sit at 0..7,
levels at ``8 + level`` and new types at -1, -2, ...: three disjoint ranges, so no (type, level)
pair adds up to another's context, and the first release's positions are unchanged.

**Chunks.** The parts of a layer are chunked separately. Chunking keeps a row together: row ``r``
of a part's grid holds output neuron ``r``'s incoming elements. If ``row_length <= c``,
``c // row_length`` whole rows share a chunk (its tail is padded); otherwise each row is split
into ``ceil(row_length / c)`` chunks of its own (the last one padded).

**Order information kept (a deliberate decision).** As pure sets, chunks ``[1 2 3 | 4 5 6]`` and
``[4 5 6 | 1 2 3]`` look alike, and so do ``[1 2 | 3 4]`` and ``[1 3 | 2 4]`` (the same values grouped
into different neurons). The encoder receives, per element, its *row slot* (which row of its
chunk it belongs to: which elements share a neuron, which the function of the network depends
on) and, per chunk, its *chunk index* within its part (the order of a layer's neurons), when
:class:`sne.encoders.sne.SNEEncoder` asks for them (the paper's preset does; the default does not).
It never receives the order of a neuron's incoming elements within a row, the arbitrary order of
the previous layer's neurons. Neuron order is a symmetry of the network too: the default leaves
both encodings out, so equivalent permutations encode alike wherever packing does not depend on
neuron order (docs/RESULTS.md: better on cross-architecture transfer, level on cross-dataset, within
the seed spread on INRs); which elements share a neuron is then told by the own-neuron features, and
``canonical_order`` makes the packing itself independent of the order for chains. Tap coordinates
are not a symmetry and are always kept.

**Merge tokens (residual connections and concatenations).** The SNE paper (Appendix D) proposes
special tokens for residual blocks. Here the data flow of a record says where they belong: a layer
whose input is a sum of several operations' outputs (an :class:`~sne.weights.record.InputSlice`
with several sources: a residual connection) gets a learned *residual* token in its layer-level
set, and a layer whose input concatenates the outputs of different operations (several slices
with different sources: a UNet skip) gets a learned *concatenation* token; a layer may get both.
The token sits beside the layer's part codes in the set that the layer encoder merges into one
layer code, so the layer code says "this layer reads a merged input" wherever the layer is, and
the network encoder sees it together with the layer's level. A token is one learned vector per
merge kind rather than per connection: which layers are summed is not encoded (a residual stream
sums every earlier write into it, and the number of writers says little). Without the hierarchy
(``use_hierarchy=False``) tokens join the network's set of chunk codes, with their layer's level
encoding. Chains (the first release's networks) have no tokens.

**Source neurons (optional).** What a row-as-set loses is the link between layers: which neuron
of the previous layer each incoming weight comes from. With ``source_features=True`` every weight
element also carries :data:`SOURCE_FEATURES` numbers describing that neuron (its standardised bias,
the root mean square of its standardised incoming weights, and a flag that a source is known).
They travel with the weight, so a permutation of the previous layer's neurons moves each feature
with its weight: the link is kept without keeping the arbitrary neuron order. They are given to
the weight of a linear or convolution layer (no groups) that reads exactly one such layer's
outputs (the previous layer in a record without data flow); every other element gets zeros:
first layers, biases, layers after a skip connection or a merge, and in networks that are not
chains most layers (a convolution after a batch norm reads the norm, not a convolution).

**Own neurons (optional).** The other half of the link: with ``own_features=True`` every weight
and bias of a plain linear or convolution layer also carries :data:`OWN_FEATURES` numbers
describing the neuron it belongs to as the next layer sees it (its standardised bias, the root
mean square of the standardised weights that read it, and a flag that such a reader is known),
so a chunk of a neuron's incoming weights knows how much that neuron matters downstream. A
reader is known where exactly one layer reads the neuron's layer, as source features define
reading; elsewhere (the output layer, a layer feeding a skip connection) the last two are zero.

**Gains.** Both sets of neuron features are computed from standardised weights, which drop each
network's scale: a SIREN's first-layer weight ``w`` sets its neuron's frequency ``30 |w|``, yet
standardised by the layer's own spread it reads the same in a network of twice the frequencies.
The last column of each is therefore a raw-scale one, the log L2 norm of the neuron's raw incoming
weights (source features: how strongly the source neuron reads its own inputs, ``|w|`` for a
one-input neuron) or of the raw weights that read it (own-neuron features). Norms, not rms: a row
of fan-in ``n`` at the usual ``1/sqrt(n)`` initialisation has norm ~1 whatever ``n``, so the
column reads alike across widths. SNE reads it by default (``use_neuron_gains``).

**Means.** The rms columns drop each weight's sign, and with it a neuron's direction: an odd
activation (sine, tanh) makes ``(w, b, v)`` -> ``(-w, -b, -v)`` a symmetry (incoming weights, bias,
weights reading the neuron), so a layer-2 weight ``v`` of a SIREN means one function beside a
source whose ``|w|`` and ``b`` it is given and another beside ``(-w, -b)``: the rms features cannot
tell them apart, while the phase of each first-layer sine depends on it. One more column after the
gain, the signed mean of the neuron's standardised incoming weights (source features: ``w`` itself,
standardised, for a one-input neuron) or of the standardised weights that read it (own-neuron
features), flips with the neuron as its bias does (``use_neuron_means``). Off by default: on the
INR table it changed nothing beyond seed noise (docs/RESULTS.md, row ``neuron-means``).

**Phases.** A sine neuron ``sin(w0 (w x + b))`` (SIREN, ``w0`` 30 unless its layer's ``w0``
attribute says otherwise) starts its wave at phase ``w0 b``, which wraps around many times over the
range biases take: a standardised bias says it only through a function with as many periods, which a
few ReLUs cannot draw. Two more columns after the mean give it directly, ``sin(w0 b)`` and
``cos(w0 b)``, for neurons of layers whose record names the sine activation (zeros for any other,
an impossible phase). A sign flip ``(w, b, v) -> (-w, -b, -v)`` negates the sine column and keeps
the cosine, as it negates the bias (``use_neuron_phases``).

**Probe values (optional).** With ``probe_points=P`` every weight and bias also carries what the
network computes, not only what it stores: its own neuron's values at ``P`` fixed inputs
(:mod:`sne.weights.probe`, after the activation), and for a weight the values of the neuron it reads
(the inputs themselves in the first layer), ``2 P`` numbers, each ``asinh``-compressed so that
unbounded activations stay in range. They travel with their neurons as the neuron features do. Only
chains of linear layers with known activations can be run; the encoder refuses other records.

**Residual sums (optional).** Source and own-neuron features stop where a layer reads a sum, yet
in a residual network that is most layers (in the first 400 test networks of the Wild Park zoo,
28% of the residual networks' weights got source features, 1% own-neuron features). A residual
stream's channel ``j`` is the sum of every writer's neuron ``j``, and one permutation moves all of
them together, so with ``through_sums=True`` a weight reading channel ``j`` gets the mean of the
writers' neuron-``j`` features, and a writer's neuron the rms of the weights of every layer that
reads the stream. Both move with the stream's permutation, as the plain features move with a layer's.

**Neuron links (optional).** Source features describe a weight's source neuron by fixed
statistics. With ``neuron_links=True`` the batch instead numbers the output neurons of every plain
linear or convolution layer and gives each element two ids: the neuron it belongs to (a weight
row's elements and its bias) and, where a source is known as for source features, the neuron its
input comes from (-1 where none). The encoder then pools a code per neuron from its elements and
hands it to the weights it feeds (:class:`sne.encoders.sne.SNEEncoder`, ``source_code_rounds``), a
learned link between layers that moves with the weights under any permutation, as the ids do.

**Input positions (optional).** The first layer's inputs are the network's own inputs (an INR's
x and y, an image's channels): their order is not a symmetry, yet a row-as-set drops it, so a 2-D
INR's x- and y-weights look alike. With ``input_positions=True`` every weight element of a linear
or convolution layer that reads only the network's input (the first layer of a record without
data flow) carries its input's coordinate in ``[-1, 1]`` (spaced as kernel taps are, so any number
of inputs fits) and a flag; every other element gets zeros (:data:`INPUT_POSITION_FEATURES`).

**Scale.** Weights of different layers differ in scale by orders of magnitude (a SIREN's first
layer ~0.5, its hidden layer ~0.015), and differences between networks are smaller still, so raw
values would drown under the positional encodings. With ``standardize=True`` each part's values
are standardised by that part's own mean and standard deviation (:func:`layer_parts`, for every
kind alike), and the two statistics travel beside them as ``part_stats`` (mean, log std): nothing
is lost, and every part arrives at unit scale whatever the architecture.

**Shape.** Attention pooling is a weighted mean: it cannot count a layer's neurons or a neuron's
inputs, and a part's spread means little without them (initialisations scale weights by
``1 / sqrt(fan-in)``, so in a zoo of many widths the log std says mostly the fan-in, and how far
training moved it from there only beside the fan-in). Every batch therefore carries
``part_shape``, each part's (log fan-in, log rows), for the encoder to read when asked
(:class:`sne.encoders.sne.SNEEncoder`, ``use_shape_features``). They are sizes, not statistics,
and are never fitted to a zoo: a test architecture of other sizes reads its own.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch

from sne.errors import CannotRead, SneError
from sne.weights.permute import input_blocks
from sne.weights.probe import SIREN_W0, probe_values
from sne.encoders.common import mean_std
from sne.weights.record import (
    KIND_BY_WEIGHT_NDIM,
    LAYER_KINDS,
    NORM_KINDS,
    TRANSPOSED_KINDS,
    Layer,
    NetworkRecord,
    activation_index,
)

#: Index of the weight and bias part of a linear or convolution layer (the first release's parts).
WEIGHT_PART, BIAS_PART = 0, 1
#: Linear and convolution kinds: the first release's, in LAYER_KINDS order.
CHAIN_KINDS = tuple(KIND_BY_WEIGHT_NDIM.values())
#: Roles of attention tensors: each projection's weight and bias, and the extra key / value biases.
ATTENTION_ROLES = ("q_weight", "k_weight", "v_weight", "q_bias", "k_bias", "v_bias", "out_weight", "out_bias",
                   "bias_k", "bias_v")
#: Every chunk type, as (layer kind, tensor role); a chunk's type is its index here. The first eight
#: are the first release's (weight ``2 * kind``, bias ``2 * kind + 1``) and must keep their indices.
CHUNK_TYPES: tuple[tuple[str, str], ...] = (
    *((kind, role) for kind in CHAIN_KINDS for role in ("weight", "bias")),
    *((kind, role) for kind in TRANSPOSED_KINDS for role in ("weight", "bias")),
    ("embedding", "weight"),
    *(("batch_norm", role) for role in ("weight", "bias", "running_mean", "running_var")),
    ("layer_norm", "weight"),
    ("layer_norm", "bias"),
    *(("group_norm", role) for role in ("weight", "bias", "running_mean", "running_var")),
    *(("attention", role) for role in ATTENTION_ROLES),
    ("parameter", "value"),
)
#: Number of distinct chunk types.
NUM_CHUNK_TYPES = len(CHUNK_TYPES)
#: Chunk types of the first release (linear and convolution weights and biases).
FIRST_RELEASE_CHUNK_TYPES = 2 * len(CHAIN_KINDS)
#: Offset of the level encoding on the axis it shares with the type encoding (:func:`type_positions`).
LEVEL_POSITION_OFFSET = FIRST_RELEASE_CHUNK_TYPES
_TYPE_INDEX = {pair: index for index, pair in enumerate(CHUNK_TYPES)}
#: Merge tokens of the layer-level sets (module docstring, "Merge tokens").
RESIDUAL_TOKEN, CONCAT_TOKEN = 0, 1
NUM_MERGE_TOKENS = 2
#: Features of an incoming weight's source neuron: standardised bias, rms of standardised incoming
#: weights, 1 where the source is known (see "Source neurons" above), its log gain ("Gains"), the
#: signed mean of its standardised incoming weights ("Means"), and its phase ("Phases").
SOURCE_FEATURES = 7
#: Features of the neuron a weight or bias belongs to: its standardised bias, the rms of the
#: standardised weights that read it in the next layer, 1 where that layer is known (see "Own
#: neurons"), the log norm of those weights ("Gains"), their signed mean ("Means") and the
#: neuron's phase ("Phases").
OWN_FEATURES = 7
#: Columns of the source and own-neuron features before the gains (what encoders without gains read).
NEURON_FEATURES_WITHOUT_GAINS = 3
#: Where the gain, the mean and the phase's sine and cosine sit among the neuron features.
GAIN_COLUMN, MEAN_COLUMN, PHASE_COLUMNS = 3, 4, (5, 6)
#: Norms below it read as it in the log gains: a dead neuron's gain is finite.
GAIN_FLOOR = 1e-4
#: Features of a first-layer weight's input: its coordinate in [-1, 1], and 1 marking a first-layer
#: weight (see "Input positions" above).
INPUT_POSITION_FEATURES = 2


def type_positions(types: torch.Tensor) -> torch.Tensor:
    """Positions of chunk types on the sinusoidal axis shared with levels (``LEVEL_POSITION_OFFSET +
    level``): the first release's types at their index, new types at -1, -2, ... (module docstring)."""
    return torch.where(types < FIRST_RELEASE_CHUNK_TYPES, types, FIRST_RELEASE_CHUNK_TYPES - 1 - types)


class RowChunkLayout(NamedTuple):
    """Where elements of a row-major ``(rows, row_length)`` grid go in its part's chunks."""

    num_chunks: int  #: chunks of the whole part
    slot: torch.Tensor  #: per element, chunk * chunk_size + position in the chunk
    row_slot: torch.Tensor  #: per element, which row of its chunk the element belongs to


def part_chunks(rows: int, row_length: int, chunk_size: int) -> int:
    """Chunks of a ``(rows, row_length)`` part (module docstring, "Chunks")."""
    if row_length <= chunk_size:
        return -(-rows // (chunk_size // row_length))
    return rows * -(-row_length // chunk_size)


def first_element(chunk: int, rows: int, row_length: int, chunk_size: int) -> int:
    """Index of the first element of a part's chunk ``chunk`` (its element count for ``chunk = num_chunks``):
    chunks follow the grid's row-major order, so a run of chunks holds one contiguous run of elements."""
    if row_length <= chunk_size:
        start = chunk * (chunk_size // row_length) * row_length
    else:
        per_row = -(-row_length // chunk_size)
        start = (chunk // per_row) * row_length + (chunk % per_row) * chunk_size
    return min(start, rows * row_length)


def row_chunk_layout(rows: int, row_length: int, chunk_size: int, start: int = 0, stop: int | None = None) -> RowChunkLayout:
    """Chunk a grid of elements row by row, never mixing part of one row with another row; the
    layout of elements ``[start, stop)`` only, computed without materialising the rest."""
    element = torch.arange(start, rows * row_length if stop is None else stop)
    row, column = element // row_length, element % row_length
    if row_length <= chunk_size:
        rows_per_chunk = chunk_size // row_length
        chunk = row // rows_per_chunk
        row_slot = row % rows_per_chunk
        position = row_slot * row_length + column
    else:
        chunk = row * -(-row_length // chunk_size) + column // chunk_size
        row_slot = torch.zeros_like(row)
        position = column % chunk_size
    return RowChunkLayout(part_chunks(rows, row_length, chunk_size), chunk * chunk_size + position, row_slot)


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
class ChunkElements:
    """The element-level half of a run of chunks ``[first, last)``: what the chunk encoder reads.
    Slots count from the run's first chunk; kernel groups hold only the run's elements."""

    tap_values: list[torch.Tensor]  #: per kernel shape, (elements, taps)
    tap_coordinates: list[torch.Tensor]  #: per kernel shape, (taps, kernel ndim)
    element_slot: list[torch.Tensor]  #: per kernel shape, (elements,) slot in (last - first, c), increasing
    element_mask: torch.Tensor  #: (last - first, c) True for real elements
    row_slot: torch.Tensor  #: (last - first, c) row of its chunk each element belongs to
    source_features: list[torch.Tensor] | None = None  #: per kernel shape, (elements, SOURCE_FEATURES)
    input_positions: list[torch.Tensor] | None = None  #: per kernel shape, (elements, INPUT_POSITION_FEATURES)
    own_features: list[torch.Tensor] | None = None  #: per kernel shape, (elements, OWN_FEATURES)
    #: per kernel shape, (elements,) the neuron an element belongs to, -1 for none ("Neuron links")
    own_neuron: list[torch.Tensor] | None = None
    #: per kernel shape, (elements,) the neuron an element's input comes from, -1 for none
    source_neuron: list[torch.Tensor] | None = None
    #: per kernel shape, (elements, 2 P) own neuron's then source neuron's probe values ("Probe values")
    probe_features: list[torch.Tensor] | None = None


@dataclass
class ChunkBatch:
    """A batch of networks as SNE's input: element taps plus the index tensors of the hierarchy.

    Sizes: ``E`` elements, ``N`` chunks of ``c`` slots, ``P`` parts (one tensor, or one attention
    projection, of a layer) of at most ``C`` chunks, ``L`` layers of at most ``S`` parts and merge
    tokens (``S >= 2``), ``T`` merge tokens, ``B`` networks of at most ``M`` layers and ``K`` chunks
    and tokens. A *slot* index ``i * width + j`` addresses row ``i``, column ``j`` of a padded
    ``(rows, width)`` tensor, so padding is a ``zeros(...).index_copy(0, slot, values)`` away.
    """

    tap_values: list[torch.Tensor]  #: per kernel shape, (elements, taps)
    tap_coordinates: list[torch.Tensor]  #: per kernel shape, (taps, kernel ndim)
    element_slot: list[torch.Tensor]  #: per kernel shape, (elements,) slot in (N, c), increasing
    element_mask: torch.Tensor  #: (N, c) True for real elements
    row_slot: torch.Tensor  #: (N, c) row of its chunk each element belongs to
    chunk_type: torch.Tensor  #: (N,) index into CHUNK_TYPES
    chunk_activation: torch.Tensor  #: (N,) index into ACTIVATIONS of the chunk's layer's activation
    chunk_level: torch.Tensor  #: (N,) level of the chunk's layer
    chunk_index: torch.Tensor  #: (N,) index of the chunk within its part
    chunk_part_slot: torch.Tensor  #: (N,) slot in (P, C)
    part_mask: torch.Tensor  #: (P, C)
    part_layer_slot: torch.Tensor  #: (P,) slot in (L, S): column j is the layer's part j
    layer_mask: torch.Tensor  #: (L, S) parts, then merge tokens
    layer_level: torch.Tensor  #: (L,)
    layer_network_slot: torch.Tensor  #: (L,) slot in (B, M)
    network_mask: torch.Tensor  #: (B, M)
    chunk_network_slot: torch.Tensor  #: (N,) slot in (B, K), for the encoder without hierarchy
    network_chunk_mask: torch.Tensor  #: (B, K) a network's chunks, then its merge tokens
    chunk_part: torch.Tensor  #: (N,) part each chunk belongs to
    part_stats: torch.Tensor  #: (P, 2) mean and log standard deviation of each part's raw values
    part_shape: torch.Tensor  #: (P, 2) log fan-in (row length times kernel taps) and log rows of each part
    token_kind: torch.Tensor  #: (T,) RESIDUAL_TOKEN or CONCAT_TOKEN
    token_layer_slot: torch.Tensor  #: (T,) slot in (L, S), after the layer's parts
    token_level: torch.Tensor  #: (T,) level of the token's layer
    token_network_slot: torch.Tensor  #: (T,) slot in (B, K), after the network's chunks
    #: per kernel shape, (elements, SOURCE_FEATURES), when pad_chunk was asked for source features
    source_features: list[torch.Tensor] | None = None
    #: per kernel shape, (elements, INPUT_POSITION_FEATURES), when pad_chunk was asked for input positions
    input_positions: list[torch.Tensor] | None = None
    #: per kernel shape, (elements, OWN_FEATURES), when pad_chunk was asked for own-neuron features
    own_features: list[torch.Tensor] | None = None
    #: per kernel shape, (elements,) neuron ids (see ChunkElements), when pad_chunk was asked for neuron links
    own_neuron: list[torch.Tensor] | None = None
    source_neuron: list[torch.Tensor] | None = None
    #: per kernel shape, (elements, 2 P), when pad_chunk was asked for probe values
    probe_features: list[torch.Tensor] | None = None
    #: neurons numbered in the batch (own_neuron and source_neuron index them)
    neuron_count: int = 0

    def elements(self, first: int, last: int) -> ChunkElements:
        """The elements of chunks ``[first, last)`` (each kernel group stores its elements in chunk
        order, so a run of chunks is one contiguous range per group)."""
        chunk_size = self.element_mask.shape[1]
        bounds = torch.tensor([first * chunk_size, last * chunk_size], device=self.element_mask.device)
        picked = {name: [] for name in ("tap_values", "tap_coordinates", "element_slot", *_OPTIONAL_ELEMENT_FIELDS)}
        for group, slots in enumerate(self.element_slot):
            start, stop = torch.searchsorted(slots, bounds).tolist()
            if start == stop:
                continue
            picked["tap_values"].append(self.tap_values[group][start:stop])
            picked["tap_coordinates"].append(self.tap_coordinates[group])
            picked["element_slot"].append(slots[start:stop] - first * chunk_size)
            for name in _OPTIONAL_ELEMENT_FIELDS:
                if getattr(self, name) is not None:
                    picked[name].append(getattr(self, name)[group][start:stop])
        for name in _OPTIONAL_ELEMENT_FIELDS:
            if getattr(self, name) is None:
                picked[name] = None
        return ChunkElements(element_mask=self.element_mask[first:last], row_slot=self.row_slot[first:last], **picked)


#: Per-element fields that a batch has only when asked for them.
_OPTIONAL_ELEMENT_FIELDS = ("source_features", "input_positions", "own_features", "own_neuron", "source_neuron",
                            "probe_features")


def _padding_mask(lengths: torch.Tensor) -> torch.Tensor:
    """(len(lengths), max length) mask of the first ``lengths[i]`` places of row ``i``."""
    return torch.arange(int(lengths.max())) < lengths[:, None]


def _slots(rows: torch.Tensor, columns: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Slots of (row, column) pairs in the padded tensor that :func:`_padding_mask` describes."""
    return rows * int(lengths.max()) + columns





class LayerPart(NamedTuple):
    """One part of a layer as a grid of elements: ``rows`` rows of ``row_length`` elements."""

    part: int  #: index of the part in its layer (WEIGHT_PART and BIAS_PART for linear / conv layers)
    type: int  #: index into CHUNK_TYPES
    kernel: tuple[int, ...]
    taps: torch.Tensor  #: (rows * row_length, taps) in the layer's dtype; standardise in float64
    row_length: int
    mean: torch.Tensor  #: mean of all values
    std: torch.Tensor  #: standard deviation of all values (common.mean_std: floored)
    rows: int
    name: str  #: the tensor's local name (with the projection for a fused attention tensor: ``in_proj_weight[q]``)

    @property
    def stats(self) -> torch.Tensor:
        """(mean, log std), what the encoder is told about a standardised part."""
        return torch.stack([self.mean, self.std.log()])

    @property
    def shape(self) -> torch.Tensor:
        """(log fan-in, log rows): a row's values (its elements' kernel taps) and the part's rows,
        the sizes that attention pooling, a weighted mean, cannot count ("Shape" above)."""
        return torch.tensor([self.row_length * self.taps.shape[1], self.rows], dtype=torch.float64).log()


def _describe(layer: Layer) -> str:
    return f"layer '{layer.name or '<root>'}' of kind '{layer.kind}'"


def check_layer(layer: Layer, source: str) -> None:
    """Refuse, in one line naming the layer and its kind, an operation SNE cannot read: an unknown
    kind, or a weight whose shape does not fit its kind."""
    if layer.kind not in LAYER_KINDS:
        raise CannotRead(f"{source}: SNE cannot encode {_describe(layer)} (known kinds: {', '.join(LAYER_KINDS)})")
    weight = layer.tensors.get("weight")
    if weight is None or not weight.is_floating_point():
        expected = None
    elif layer.kind in CHAIN_KINDS or layer.kind in TRANSPOSED_KINDS:
        expected = int(layer.kind[-2]) + 2 if layer.kind[-2].isdigit() else 2
    elif layer.kind == "embedding":
        expected = 2
    else:
        expected = weight.dim()
    fused = layer.tensors.get("in_proj_weight") if layer.kind == "attention" else None
    if (expected is not None and weight.dim() != expected) or (
        fused is not None and (fused.dim() != 2 or fused.shape[0] % 3)
    ):
        tensor = weight if fused is None else fused
        raise SneError(f"{source}: SNE cannot encode {_describe(layer)} with a "
                       f"{'weight' if fused is None else 'in_proj_weight'} of shape {tuple(tensor.shape)}")
    if layer.kind in CHAIN_KINDS and weight is not None and weight.numel() == 0:
        raise SneError(f"{source}: layer '{layer.name}' has an empty weight {tuple(weight.shape)}")


def _rows_of_one(tensor: torch.Tensor) -> tuple[torch.Tensor, int, int, tuple[int, ...]]:
    return tensor.reshape(-1, 1), tensor.numel(), 1, ()


def _rows_of_last(tensor: torch.Tensor) -> tuple[torch.Tensor, int, int, tuple[int, ...]]:
    """A free parameter: 0-D and 1-D ones like a bias; leading dimensions flattened into rows of the last."""
    if tensor.dim() <= 1:
        return _rows_of_one(tensor)
    return tensor.reshape(-1, 1), tensor.numel() // tensor.shape[-1], tensor.shape[-1], ()


def _dense(weight: torch.Tensor) -> tuple[torch.Tensor, int, int, tuple[int, ...]]:
    """``(out, in, *kernel)``: ``out`` rows of ``in`` elements of the kernel's taps."""
    out, inputs, *kernel = weight.shape
    return weight.reshape(out * inputs, -1), out, inputs, tuple(kernel)


def _transposed(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A transposed convolution's ``(in, out / groups, *kernel)`` weight as ``(out, in / groups, *kernel)``."""
    inputs, per_group, *kernel = weight.shape
    grouped = weight.reshape(groups, inputs // groups, per_group, *kernel).transpose(1, 2)
    return grouped.reshape(groups * per_group, inputs // groups, *kernel)


def _grids(layer: Layer) -> list[tuple[str, str, tuple[torch.Tensor, int, int, tuple[int, ...]]]]:
    """(role, name, (taps, rows, row_length, kernel)) of every floating-point tensor of ``layer``,
    in the layer's tensor order; a fused attention tensor gives one entry per projection."""
    kind = layer.kind
    grids = []
    for name, tensor in layer.tensors.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        role = name
        if kind in CHAIN_KINDS and name == "weight":
            grid = _dense(tensor)
        elif kind in TRANSPOSED_KINDS and name == "weight":
            groups = int(layer.attrs.get("groups", 1) or 1)
            if tensor.shape[0] % groups:
                groups = 1
            grid = _dense(_transposed(tensor, groups))
        elif kind == "embedding" and name == "weight":
            grid = tensor.reshape(-1, 1), tensor.shape[0], tensor.shape[1], ()
        elif (kind in CHAIN_KINDS or kind in TRANSPOSED_KINDS or kind in NORM_KINDS) and (kind, name) in _TYPE_INDEX:
            grid = _rows_of_one(tensor)  # biases, normalisation scales, shifts and statistics
        elif kind == "attention" and name in ("in_proj_weight", "in_proj_bias"):
            for projection, values in zip("qkv", tensor.chunk(3)):
                role = f"{projection}_{name.rsplit('_', 1)[1]}"
                grid = _dense(values) if values.dim() == 2 else _rows_of_one(values)
                grids.append((role, f"{name}[{projection}]", grid))
            continue
        elif kind == "attention" and name in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"):
            role = f"{name[0] if name[1] == '_' else 'out'}_weight"
            grid = _dense(tensor) if tensor.dim() == 2 else _rows_of_last(tensor)
        elif kind == "attention" and name == "out_proj.bias":
            role, grid = "out_bias", _rows_of_one(tensor)
        elif kind == "attention" and name in ("bias_k", "bias_v"):
            grid = _rows_of_last(tensor)
        else:  # kind 'parameter', or a tensor whose role in its operation is not known: a free parameter
            role, grid = "value", _rows_of_last(tensor)
        grids.append((role if (kind, role) in _TYPE_INDEX else "value", name, grid))
    return grids


def layer_parts(layer: Layer, source: str) -> list[LayerPart]:
    """The parts of ``layer`` (module docstring): one per floating-point tensor, per projection of a
    fused attention tensor; none for a ``buffer`` operation. Ordered by chunk type, then by the
    layer's tensor order, so a linear or convolution layer's weight is part 0 and its bias part 1.
    Each part's mean and standard deviation are computed here, the one place parts are standardised."""
    check_layer(layer, source)
    if layer.kind == "buffer":
        return []
    typed = []
    for role, name, (taps, rows, row_length, kernel) in _grids(layer):
        kind = layer.kind if role != "value" else "parameter"
        typed.append((_TYPE_INDEX[kind, role], name, taps, rows, row_length, kernel))
    typed.sort(key=lambda entry: entry[0])  # stable: tensors of one type keep the layer's order
    parts = []
    for index, (part_type, name, taps, rows, row_length, kernel) in enumerate(typed):
        # Kept in the record's dtype (a view of its tensor, file-mapped for a safetensors checkpoint):
        # a float64 copy of every part would be twice a float32 network's size, for the whole encode.
        mean, std = mean_std(taps, unbiased=False)
        parts.append(LayerPart(index, part_type, kernel, taps, row_length, mean, std, rows, name))
    return parts


def merge_tokens(layer: Layer) -> list[int]:
    """The merge tokens of ``layer``'s set (module docstring): RESIDUAL_TOKEN when a slice of its
    input sums several operations' outputs, CONCAT_TOKEN when it concatenates different ones."""
    if not layer.inputs:
        return []
    tokens = []
    if any(len(piece.sources) > 1 for piece in layer.inputs):
        tokens.append(RESIDUAL_TOKEN)
    if len({piece.sources for piece in layer.inputs}) > 1:
        tokens.append(CONCAT_TOKEN)
    return tokens


def _plain_dense(layer: Layer) -> bool:
    """A linear or convolution layer of the first release's form: no groups, only a weight and a bias."""
    return (layer.kind in CHAIN_KINDS and int(layer.attrs.get("groups", 1) or 1) == 1
            and set(layer.tensors) <= {"weight", "bias"})


def _summed_sources(record: NetworkRecord, index: int) -> tuple[int, ...] | None:
    """The operations whose outputs, summed, are all of layer ``index``'s inputs (one: a chain; several:
    a residual sum), else ``None``; the previous layer when the record has no data flow (the first
    release's chains). ``None`` where an input is the network's own or a concatenation."""
    layer = record.layers[index]
    if layer.skip_from:
        return None
    if layer.inputs is None:
        return (index - 1,) if index > 0 else None
    sources = {piece.sources for piece in layer.inputs}
    if len(sources) != 1:
        return None
    (only,) = sources
    return only if only and min(only) >= 0 else None


def _dense_source(record: NetworkRecord, index: int, through_sums: bool = False) -> tuple[tuple[int, ...], int] | None:
    """``(source layers, inputs per source neuron)`` where layer ``index`` is a plain linear or
    convolution layer reading exactly one such layer (with ``through_sums``, or the sum of several:
    a residual stream), a flattened channel feeding a block of inputs; else ``None``: where an
    input's source neurons are known."""
    sources = _summed_sources(record, index)
    if sources is None or (len(sources) > 1 and not through_sums) or not _plain_dense(record.layers[index]):
        return None
    if not all(_plain_dense(record.layers[source]) for source in sources):
        return None
    try:
        blocks = {input_blocks(record.layers[source], record.layers[index], record.source) for source in sources}
    except SneError:
        return None
    return (sources, blocks.pop()) if len(blocks) == 1 else None


def reads_network_input(record: NetworkRecord, index: int) -> bool:
    """Whether layer ``index`` reads only the network's input (the first layer of a record without flow)."""
    layer = record.layers[index]
    if layer.inputs is None:
        return index == 0 and not layer.skip_from
    return all(piece.sources == (-1,) for piece in layer.inputs)


def source_neuron_features(record: NetworkRecord, through_sums: bool = False,
                           memo: RecordParts | None = None) -> list[torch.Tensor | None]:
    """Per layer, ``(in_features, SOURCE_FEATURES)``: the features of the neuron each input of the
    layer comes from (a flattened channel feeds a block of inputs), or ``None`` where unknown: given
    for a linear or convolution layer reading exactly one such layer, and with ``through_sums`` a
    sum of such layers, whose neurons' features are averaged (module docstring, "Residual sums")."""
    memo = memo or RecordParts(record)

    @lru_cache(maxsize=None)  # a residual stream's writers are read by every later layer: describe each once
    def neurons(source: int) -> torch.Tensor:
        layer = record.layers[source]
        (weight, *bias), raw = memo.rows(source)
        bias = bias[0].squeeze(1) if bias else weight.new_zeros(layer.out_features)
        return torch.stack([bias, weight.square().mean(1).sqrt(), torch.ones_like(bias), _log_gain(raw.norm(dim=1)),
                            weight.mean(1), *_phases(layer)], dim=1)

    features: list[torch.Tensor | None] = []
    for index in range(len(record.layers)):
        link = _dense_source(record, index, through_sums)
        if link is None:
            features.append(None)
            continue
        sources, block = link
        features.append(torch.stack([neurons(source) for source in sources]).mean(0).repeat_interleave(block, dim=0))
    return features


def own_neuron_features(record: NetworkRecord, through_sums: bool = False,
                        memo: RecordParts | None = None) -> list[torch.Tensor | None]:
    """Per layer, ``(out_features, OWN_FEATURES)`` for a plain linear or convolution layer (else
    ``None``): each output neuron's standardised bias, the rms of the standardised weights that read
    it where exactly one layer does (as source features define reading), and 1 there; 0 and 0 where
    no layer or several do (the output layer, a layer feeding a skip connection). With
    ``through_sums`` readers of residual sums count too, and the rms runs over all readers' weights."""
    readers: dict[int, list[tuple[int, int]]] = {}
    for index in range(len(record.layers)):
        link = _dense_source(record, index, through_sums)
        if link is not None:
            for source in link[0]:
                readers.setdefault(source, []).append((index, link[1]))
    memo = memo or RecordParts(record)
    features: list[torch.Tensor | None] = []
    for index, layer in enumerate(record.layers):
        if not _plain_dense(layer):
            features.append(None)
            continue
        _, *bias = memo.rows(index)[0]
        bias = bias[0].squeeze(1) if bias else torch.zeros(layer.out_features, dtype=torch.float64)
        outgoing, known, gain, mean = (torch.zeros_like(bias) for _ in range(4))
        mine = readers.get(index, [])
        if len(mine) == 1 or (through_sums and mine):
            sums, squares, raw_squares, count = torch.zeros_like(bias), torch.zeros_like(bias), torch.zeros_like(bias), 0
            for reader, block in mine:
                # The reader's columns of neuron i are i * block ... (i + 1) * block - 1 (all rows, all taps).
                shape = (record.layers[reader].out_features, layer.out_features, block, -1)
                (standardised, *_), raw = memo.rows(reader)
                columns = standardised.reshape(shape)
                sums, count = sums + columns.sum(dim=(0, 2, 3)), count + columns[:, 0].numel()
                squares = squares + columns.square().sum(dim=(0, 2, 3))
                raw_squares = raw_squares + raw.reshape(shape).square().sum(dim=(0, 2, 3))
            outgoing, known, gain = (squares / count).sqrt(), torch.ones_like(bias), _log_gain(raw_squares.sqrt())
            mean = sums / count
        features.append(torch.stack([bias, outgoing, known, gain, mean, *_phases(layer)], dim=1))
    return features


def _phases(layer: Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase columns of the neuron features of ``layer``'s outputs ("Phases"): sin and cos of
    ``w0 * bias`` for a sine layer (a bias-free one has phase 0), zeros for any other activation."""
    bias = layer.tensors.get("bias")
    zeros = torch.zeros(layer.out_features, dtype=torch.float64)
    if layer.activation != "sine":
        return zeros, zeros
    phase = float(layer.attrs.get("w0", SIREN_W0)) * (bias.double().reshape(-1) if bias is not None else zeros)
    return phase.sin(), phase.cos()


def _log_gain(norm: torch.Tensor) -> torch.Tensor:
    """The gain column of the neuron features ("Gains"): log of a norm, floored at :data:`GAIN_FLOOR`."""
    return norm.clamp_min(GAIN_FLOOR).log()


class RecordParts:
    """The parts of a record's layers (:func:`layer_parts`), each layer's made once however many
    readers, writers and chunk layouts ask for them; ``rows(index)``: a plain layer's parts
    standardised as the chunks standardise them (each part's own mean and std), weight then bias,
    and its weight as chunked but not standardised, all ``(out_features, -1)`` in float64."""

    def __init__(self, record: NetworkRecord) -> None:
        self.record = record
        self.parts = lru_cache(maxsize=None)(self._parts)
        self.rows = lru_cache(maxsize=None)(self._rows)

    def _parts(self, index: int) -> list[LayerPart]:
        return layer_parts(self.record.layers[index], self.record.source)

    def _rows(self, index: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        out, parts = self.record.layers[index].out_features, self.parts(index)
        standardised = [((part.taps.double() - part.mean) / part.std).reshape(out, -1) for part in parts]
        return standardised, parts[0].taps.double().reshape(out, -1)


def neuron_ids(record: NetworkRecord, first: int) -> tuple[list[int], list[torch.Tensor | None]]:
    """Neuron links of ``record``, its neurons numbered from ``first``: per layer, the id of its
    first output neuron (-1 unless a plain linear or convolution layer, whose output neurons, a
    weight row and its bias each, get consecutive ids), and ``(in_features,)`` the id of the neuron
    each input comes from, where known as for source features (module docstring), else ``None``."""
    firsts, next_id = [], first
    for layer in record.layers:
        firsts.append(next_id if _plain_dense(layer) else -1)
        next_id += layer.out_features if _plain_dense(layer) else 0
    sources: list[torch.Tensor | None] = []
    for index, layer in enumerate(record.layers):
        link = _dense_source(record, index)
        sources.append(None if link is None else firsts[link[0][0]] + torch.arange(layer.in_features) // link[1])
    return firsts, sources


def input_position_features(layer: Layer) -> torch.Tensor:
    """``(out_features * in_features, INPUT_POSITION_FEATURES)``: for each weight element of a layer
    reading the network's input, in row-major order, its input's coordinate and a flag of 1 (with
    groups, output channel ``o``'s ``j``-th element reads input ``group(o) * in_per_group + j``)."""
    groups = int(layer.attrs.get("groups", 1) or 1)
    out, per_group = layer.out_features, layer.in_features
    if out % groups:
        groups = 1
    coordinates = kernel_coordinates((per_group * groups,)).squeeze(1)
    inputs = (torch.arange(out) // (out // groups)).unsqueeze(1) * per_group + torch.arange(per_group)
    coordinate = coordinates[inputs.reshape(-1)]
    return torch.stack([coordinate, torch.ones_like(coordinate)], dim=1)


class PlacedPart(NamedTuple):
    """A part at its place in a batch: chunks ``[first_chunk, first_chunk + num_chunks)``."""

    part: LayerPart
    first_chunk: int
    num_chunks: int
    sources: torch.Tensor | None  #: (row_length, SOURCE_FEATURES) of each column's source neuron, else zeros
    positions: torch.Tensor | None  #: (rows * row_length, INPUT_POSITION_FEATURES), else zeros
    first_neuron: int = -1  #: id of the neuron of row 0 (rows are consecutive neurons), -1 for none
    source_ids: torch.Tensor | None = None  #: (row_length,) id of each column's source neuron, else -1
    own: torch.Tensor | None = None  #: (rows, OWN_FEATURES) of each row's neuron, else zeros
    probe_own: torch.Tensor | None = None  #: (rows, P) probe values of each row's neuron, else zeros
    probe_source: torch.Tensor | None = None  #: (row_length, P) probe values of each column's source, else zeros


@dataclass
class ChunkPlan:
    """A batch laid out into chunks without its elements: ``skeleton`` holds the hierarchy's index
    tensors (its element fields are empty) and :meth:`elements` makes the elements of any run of
    chunks on demand, so a large network is encoded run by run with only chunk codes kept."""

    skeleton: ChunkBatch
    parts: list[PlacedPart]
    chunk_size: int
    dtype: torch.dtype
    standardize: bool
    source_features: bool
    input_positions: bool
    neuron_links: bool = False
    own_features: bool = False
    probe_points: int = 0

    @property
    def num_chunks(self) -> int:
        return len(self.skeleton.chunk_type)

    def elements(self, first: int, last: int) -> ChunkElements:
        """The elements of chunks ``[first, last)``, in the layout :func:`pad_chunk` gives the whole batch."""
        c, count = self.chunk_size, last - first
        starts = [placed.first_chunk for placed in self.parts]
        groups: dict[tuple[int, ...], dict[str, list[torch.Tensor]]] = {}
        row_slot = torch.zeros(count * c, dtype=torch.long)
        mask = torch.zeros(count * c, dtype=torch.bool)
        for placed in self.parts[max(bisect_right(starts, first) - 1, 0):]:
            if placed.first_chunk >= last:
                break
            part = placed.part
            begin = max(first, placed.first_chunk) - placed.first_chunk
            end = min(last, placed.first_chunk + placed.num_chunks) - placed.first_chunk
            if begin >= end:
                continue
            e0 = first_element(begin, part.rows, part.row_length, c)
            e1 = first_element(end, part.rows, part.row_length, c)
            layout = row_chunk_layout(part.rows, part.row_length, c, e0, e1)
            slot = layout.slot + (placed.first_chunk - first) * c
            taps = part.taps[e0:e1]
            if self.standardize:
                taps = (taps.double() - part.mean) / part.std
            group = groups.setdefault(part.kernel, {"taps": [], "slots": [], "sources": [], "positions": [],
                                                    "own_features": [], "own": [], "source_ids": [], "probes": []})
            group["taps"].append(taps.to(self.dtype))
            group["slots"].append(slot)
            if self.source_features:
                sources = (placed.sources[torch.arange(e0, e1) % part.row_length] if placed.sources is not None
                           else torch.zeros(e1 - e0, SOURCE_FEATURES))
                group["sources"].append(sources.to(self.dtype))
            if self.input_positions:
                positions = (placed.positions[e0:e1] if placed.positions is not None
                             else torch.zeros(e1 - e0, INPUT_POSITION_FEATURES))
                group["positions"].append(positions.to(self.dtype))
            if self.own_features:
                owners = (placed.own[torch.arange(e0, e1) // part.row_length] if placed.own is not None
                          else torch.zeros(e1 - e0, OWN_FEATURES))
                group["own_features"].append(owners.to(self.dtype))
            if self.probe_points:
                element = torch.arange(e0, e1)
                none = torch.zeros(e1 - e0, self.probe_points)
                own = placed.probe_own[element // part.row_length] if placed.probe_own is not None else none
                read = placed.probe_source[element % part.row_length] if placed.probe_source is not None else none
                group["probes"].append(torch.cat([own, read], dim=1).to(self.dtype))
            if self.neuron_links:
                element = torch.arange(e0, e1)
                group["own"].append(placed.first_neuron + element // part.row_length if placed.first_neuron >= 0
                                    else torch.full((e1 - e0,), -1))
                group["source_ids"].append(placed.source_ids[element % part.row_length]
                                           if placed.source_ids is not None else torch.full((e1 - e0,), -1))
            row_slot[slot] = layout.row_slot
            mask[slot] = True
        return ChunkElements(
            tap_values=[torch.cat(g["taps"]) for g in groups.values()],
            tap_coordinates=[kernel_coordinates(k).to(self.dtype) for k in groups],
            element_slot=[torch.cat(g["slots"]) for g in groups.values()],
            element_mask=mask.view(count, c),
            row_slot=row_slot.view(count, c),
            source_features=[torch.cat(g["sources"]) for g in groups.values()] if self.source_features else None,
            input_positions=[torch.cat(g["positions"]) for g in groups.values()] if self.input_positions else None,
            own_features=[torch.cat(g["own_features"]) for g in groups.values()] if self.own_features else None,
            own_neuron=[torch.cat(g["own"]) for g in groups.values()] if self.neuron_links else None,
            source_neuron=[torch.cat(g["source_ids"]) for g in groups.values()] if self.neuron_links else None,
            probe_features=[torch.cat(g["probes"]) for g in groups.values()] if self.probe_points else None,
        )

    def moved_to(self, device: torch.device | str) -> "ChunkPlan":
        """The plan with its index tensors on ``device``; parts stay where they are, and each run
        of elements moves when it is made."""
        from sne.encoders.base import batch_to

        return replace(self, skeleton=batch_to(self.skeleton, device))

    def batch(self) -> ChunkBatch:
        """The whole batch with its elements: what :func:`pad_chunk` returns."""
        elements = self.elements(0, self.num_chunks)
        return replace(self.skeleton, **{f.name: getattr(elements, f.name) for f in fields(elements)})


def pad_chunk(
    records: Sequence[NetworkRecord], chunk_size: int, dtype: torch.dtype = torch.float32, standardize: bool = False,
    source_features: bool = False, input_positions: bool = False, neuron_links: bool = False,
    own_features: bool = False, through_sums: bool = False, probe_points: int = 0,
) -> ChunkBatch:
    """Chunk every part of every layer of ``records`` (see the module docstring)."""
    return plan_chunks(records, chunk_size, dtype, standardize, source_features, input_positions, neuron_links,
                       own_features, through_sums, probe_points).batch()


def plan_chunks(
    records: Sequence[NetworkRecord], chunk_size: int, dtype: torch.dtype = torch.float32, standardize: bool = False,
    source_features: bool = False, input_positions: bool = False, neuron_links: bool = False,
    own_features: bool = False, through_sums: bool = False, probe_points: int = 0,
) -> ChunkPlan:
    """Lay out every part of every layer of ``records`` into chunks (module docstring); elements on
    demand. ``through_sums``: source and own-neuron features across residual sums too ("Residual sums");
    ``probe_points``: values at that many probe inputs ("Probe values"; records that cannot run raise)."""
    if not records:
        raise SneError("cannot encode an empty batch of networks")
    placed_parts: list[PlacedPart] = []
    part_type, part_level, part_network, part_lengths, part_layer, part_index = [], [], [], [], [], []
    part_activation = []
    token_kind, token_layer, token_index, token_network = [], [], [], []
    layer_level, layer_size, layers_per_network, part_stats, part_shape = [], [], [], [], []
    num_chunks = num_neurons = 0
    for network, record in enumerate(records):
        none = [None] * len(record.layers)
        memo = RecordParts(record)
        sources = source_neuron_features(record, through_sums, memo) if source_features else none
        owners = own_neuron_features(record, through_sums, memo) if own_features else none
        probes = ([torch.asinh(values) for values in probe_values(record, probe_points)] if probe_points
                  else [None] * (len(record.layers) + 1))
        if neuron_links:
            first_neurons, source_ids = neuron_ids(record, num_neurons)
            num_neurons += sum(layer.out_features for layer in record.layers if _plain_dense(layer))
        else:
            first_neurons, source_ids = [-1] * len(record.layers), [None] * len(record.layers)
        first_layer = len(layer_level)
        for index, (layer, layer_sources) in enumerate(zip(record.layers, sources)):
            parts = memo.parts(index)
            if not parts:
                continue
            reads_input = input_positions and _plain_dense(layer) and reads_network_input(record, index)
            for part in parts:
                weight = part.part == WEIGHT_PART
                length = part_chunks(part.rows, part.row_length, chunk_size)
                placed_parts.append(PlacedPart(
                    part, num_chunks, length,
                    layer_sources if weight and layer_sources is not None else None,
                    input_position_features(layer) if reads_input and weight else None,
                    first_neurons[index] if part.part in (WEIGHT_PART, BIAS_PART) else -1,
                    source_ids[index] if weight else None,
                    owners[index] if part.part in (WEIGHT_PART, BIAS_PART) else None,
                    probes[index + 1] if part.part in (WEIGHT_PART, BIAS_PART) else None,
                    probes[index] if weight else None,
                ))
                part_stats.append(part.stats)
                part_shape.append(part.shape)
                part_type.append(part.type)
                part_activation.append(activation_index(layer.activation))
                part_level.append(layer.level)
                part_network.append(network)
                part_lengths.append(length)
                part_layer.append(len(layer_level))
                part_index.append(part.part)
                num_chunks += length
            tokens = merge_tokens(layer)
            for j, kind in enumerate(tokens):
                token_kind.append(kind)
                token_layer.append(len(layer_level))
                token_index.append(len(parts) + j)
                token_network.append(network)
            layer_level.append(layer.level)
            layer_size.append(len(parts) + len(tokens))
        if len(layer_level) == first_layer:
            raise SneError(f"{record.source}: SNE found nothing to encode (no floating-point parameters)")
        layers_per_network.append(len(layer_level) - first_layer)

    # Chunks, parts and layers are numbered in record order, so each one's index within its
    # parent is its global index minus the parent's first.
    lengths = torch.tensor(part_lengths)
    chunk_part = torch.repeat_interleave(lengths)
    chunk_index = torch.arange(num_chunks) - (lengths.cumsum(0) - lengths)[chunk_part]
    chunk_network = torch.tensor(part_network)[chunk_part]
    chunks_per_network = torch.bincount(chunk_network, minlength=len(records))
    chunk_in_network = torch.arange(num_chunks) - (chunks_per_network.cumsum(0) - chunks_per_network)[chunk_network]
    tokens_network = torch.tensor(token_network, dtype=torch.long)
    tokens_per_network = torch.bincount(tokens_network, minlength=len(records))
    token_in_network = (torch.arange(len(token_kind)) - (tokens_per_network.cumsum(0) - tokens_per_network)[tokens_network])
    items_per_network = chunks_per_network + tokens_per_network
    layer_counts = torch.tensor(layers_per_network)
    layer_network = torch.repeat_interleave(layer_counts)
    layer_in_network = torch.arange(len(layer_level)) - (layer_counts.cumsum(0) - layer_counts)[layer_network]
    # At least two columns per layer, the first release's (weight, bias) layout of chains.
    width = max(2, *layer_size)
    layer_mask = torch.arange(width) < torch.tensor(layer_size)[:, None]
    token_layer_tensor = torch.tensor(token_layer, dtype=torch.long)

    skeleton = ChunkBatch(
        tap_values=[],
        tap_coordinates=[],
        element_slot=[],
        element_mask=torch.zeros(0, chunk_size, dtype=torch.bool),
        row_slot=torch.zeros(0, chunk_size, dtype=torch.long),
        chunk_type=torch.tensor(part_type)[chunk_part],
        chunk_activation=torch.tensor(part_activation)[chunk_part],
        chunk_level=torch.tensor(part_level)[chunk_part],
        chunk_index=chunk_index,
        chunk_part_slot=_slots(chunk_part, chunk_index, lengths),
        part_mask=_padding_mask(lengths),
        part_layer_slot=torch.tensor(part_layer) * width + torch.tensor(part_index),
        layer_mask=layer_mask,
        layer_level=torch.tensor(layer_level),
        layer_network_slot=_slots(layer_network, layer_in_network, layer_counts),
        network_mask=_padding_mask(layer_counts),
        chunk_network_slot=_slots(chunk_network, chunk_in_network, items_per_network),
        network_chunk_mask=_padding_mask(items_per_network),
        chunk_part=chunk_part,
        part_stats=torch.stack(part_stats).to(dtype),
        part_shape=torch.stack(part_shape).to(dtype),
        token_kind=torch.tensor(token_kind, dtype=torch.long),
        token_layer_slot=token_layer_tensor * width + torch.tensor(token_index, dtype=torch.long),
        token_level=torch.tensor(layer_level)[token_layer_tensor],
        token_network_slot=_slots(tokens_network, chunks_per_network[tokens_network] + token_in_network,
                                  items_per_network),
        source_features=None,
        input_positions=None,
        neuron_count=num_neurons,
    )
    return ChunkPlan(skeleton, placed_parts, chunk_size, dtype, standardize, source_features, input_positions,
                     neuron_links, own_features, probe_points)
