"""SNE, the Set-based Neural network Encoder (Andreis et al.): reference implementation.

    taps -> tap MLP, mean over a kernel's taps                       -> elements (+ row slot enc)
    pad-chunk (sne.encoders.chunking)                                -> chunks (N, c, h_c)
    chunk encoder:   SABs -> + type enc + level enc -> SABs -> PMA     -> chunk codes (N, h_c) -> (N, h)
                     (1 SAB each and h_c = h/2 by default; the paper: 2 and h)
    layer encoder:   + chunk index enc -> SAB stack -> PMA per window  -> part codes
                     of part_window chunks, level by level (paper: per part)
                     SAB -> PMA over a layer's part codes + merge tokens -> layer codes
    network encoder: + level enc -> SAB stack -> PMA -> Linear         -> z (B, out_dim)

A layer's *parts* are its floating-point tensors (weight, bias, a normalisation's scale, shift and
running statistics, each attention projection, free parameters), each with its own type encoding;
a layer reading a residual sum or a concatenation gets a learned merge token in its set (the SNE
paper's special tokens for residual blocks). Both are described in :mod:`sne.encoders.chunking`.

All chunks of all layers of all networks in a batch go through the chunk encoder in one call; the
later stages gather their sets with index tensors and key-padding masks, so padding never changes
a network's code and no shape depends on the number or size of layers or on kernel sizes: one
trained encoder takes any architecture a record can hold (:data:`sne.weights.record.LAYER_KINDS`),
and encoders trained before the record was generalised load and read chains exactly as before.

Weight-space outputs (:meth:`SNEEncoder.make_weight_head`): SNE is not built to be equivariant,
so outputs are decoded per element. Every element's code after the second chunk set-to-set stage
(before the chunk PMA), plus the broadcast network code, is decoded tap by tap with the tap's
coordinate encoding (:class:`ElementDecoder`, the mirror of :class:`ElementEmbedding`): a kernel
of any size decodes into all its values. The chunking bookkeeping puts every element back at its
parameter's place, and values are scaled by their part's standard deviation when parts are
standardised, so outputs are in weight units.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sne.encoders.base import Architecture, Encoder, WeightBatch, batch_to, register_encoder
from sne.encoders.common import mean_std
from sne.encoders.chunking import (
    CHAIN_KINDS,
    GAIN_COLUMN,
    LEVEL_POSITION_OFFSET,
    MEAN_COLUMN,
    NUM_CHUNK_TYPES,
    PHASE_COLUMNS,
    NEURON_FEATURES_WITHOUT_GAINS,
    NUM_MERGE_TOKENS,
    ChunkBatch,
    ChunkElements,
    ChunkPlan,
    check_layer,
    layer_parts,
    pad_chunk,
    plan_chunks,
    type_positions,
)
from sne.encoders.positional import coordinate_encoding, sinusoidal_encoding
from sne.encoders.set_blocks import PMA, SAB, SET_STATISTICS, ResidualFF, masked_mean, norm_placement, set_statistics
from sne.errors import SneError
from sne.weights.batch import with_parameter_values
from sne.weights.permute import (
    canonical_permutations, canonical_signs, canonicalize_signs, flip_signs, permute_hidden, supports_sign_flips,
)
from sne.weights.probe import check_probeable
from sne.weights.record import ACTIVATIONS, KIND_BY_WEIGHT_NDIM, NetworkRecord

#: Options and their defaults (chunk_micro_batch=None: no micro-batching); the paper's settings are
#: ``preset=paper`` (:data:`PRESETS`).
DEFAULT_OPTIONS: dict[str, Any] = {
    "chunk_size": 32,
    "hidden": 64,
    "heads": 4,
    "num_sab": 2,
    "chunk_sab": 1,
    "out_dim": 32,
    "layer_norm": False,
    "qk_norm": False,
    "use_type_encoding": True,
    "use_level_encoding": True,
    "use_chunk_index_encoding": False,
    "use_row_slot_encoding": False,
    "use_set_functions": True,
    "use_hierarchy": True,
    "use_source_features": True,
    "use_input_positions": False,
    "use_own_neuron_features": True,
    "standardize_layers": True,
    "batch_norm": True,
    "chunk_micro_batch": None,
    "part_window": 64,
    "chunk_hidden": 32,
    "canonical_order": False,
    "canonical_signs": False,
    "source_code_rounds": 0,
    "chunk_link_passes": 0,
    "level_origin": "input",
    "use_activation_encoding": False,
    "use_shape_features": False,
    "use_residual_features": False,
    "use_neuron_gains": True,
    "use_neuron_means": False,
    "use_neuron_phases": True,
    "preserve_chunk_scale": False,
    "pool_seeds": 1,
    "pool_statistics": True,
    "probe_points": 0,
}

#: Where layer levels count from (option ``level_origin``).
LEVEL_ORIGINS = ("input", "output")

#: Named sets of options (``preset=NAME``; options given beside it win). ``paper``: SNE as the paper
#: describes it, for reproducing its numbers: one set per layer part, raw weights (no layer
#: standardisation), no batch norm after pooling, no neuron features, neuron order encoded.
#: ``wide``: the chunk stage (nearly all of SNE's FLOPs) at the full width and depth, as the paper
#: has it: about 3x the defaults' training and encoding time, for more accuracy on small zoos (600
#: INRs: in-recipe tau 0.68 against 0.59; 3000 INRs: normalised MSE 0.089 against 0.095; docs/RESULTS.md).
#: ``fast``: the defaults' chunk stage (since 2026-12-02; the name keeps older commands' meaning).
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"chunk_hidden": 32, "chunk_sab": 1},
    "wide": {"chunk_hidden": None, "chunk_sab": None},
    "paper": {"part_window": None, "chunk_hidden": None, "chunk_sab": None, "standardize_layers": False,
              "batch_norm": False, "use_source_features": False, "use_own_neuron_features": False,
              "use_neuron_gains": False, "use_neuron_phases": False,
              "use_chunk_index_encoding": True, "use_row_slot_encoding": True, "pool_statistics": False},
}

#: Training settings of a preset (TrainConfig fields), under those the user sets: the paper trains
#: without augmentation, and with batch norms' running averages as they are.
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "paper": {"permutation_augment": False, "sign_flip_augment": False, "bn_recalibration": 0, "test_time_flips": 0,
              "batch_size": 64, "schedule": "multistep", "ema_epochs": 0.0},
}

#: Most kernel dimensions of any layer kind (conv3d); tap coordinates are zero-padded to it.
MAX_KERNEL_DIMS = max(KIND_BY_WEIGHT_NDIM) - 2
#: Levels in the layer-statistics tables (deeper levels read the deepest: see fill_unseen_levels).
MAX_NORMALIZED_LEVELS = 128
#: Floor of a fitted statistic's spread across networks: coarser than common.STD_FLOOR, because the
#: statistics are (mean, log std) of whole parts, and a near-constant one carries no signal worth 1e6x.
STATS_STD_FLOOR = 1e-4
#: Octave frequencies per kernel dimension in a tap's coordinate encoding.
TAP_FREQUENCIES = 4
#: Chunks encoded at a time without gradients: activations of a run this size stay in cache, and
#: the memory of encoding a network does not grow with its size beyond its chunk codes.
INFERENCE_CHUNKS = 128
TRAINING_CHUNKS = 128
#: Where the activation codes start on the sinusoidal axis (their initialisation; they are learned).
ACTIVATION_POSITION_OFFSET = 1024
#: Divides the log sizes of ``use_shape_features`` (a fan-in of ~3000 reads 1): raw sizes, never
#: fitted to a zoo, so that another architecture's sizes read as what they are.
SHAPE_LOG_SCALE = 8.0
#: Windows of the part stage encoded at a time (:meth:`SNEEncoder._part_codes`).
WINDOW_RUN = 256


def fill_unseen_levels(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-statistics tables ``(levels, chunk types, 2)`` in which every level no training network
    had takes, per chunk type, the statistics of the nearest level one had (the deeper on a tie).

    A network deeper than the training networks (another architecture) has its extra layers'
    statistics standardised like those of the training networks' nearest layers of the same type
    instead of read raw, far outside what the encoder was trained on. An entry counts as unfitted
    while it is the identity (mean 0, std 1 in both statistics); a type no training network had stays
    the identity. Fitted entries are unchanged, so networks like the training networks encode as before."""
    fitted = ((mean != 0) | (std != 1)).any(-1)  # (levels, types)
    levels = torch.arange(mean.shape[0], device=mean.device)
    # Twice the distance, less one for the deeper of two equally near levels.
    cost = 2 * (levels[:, None] - levels[None, :]).abs() - (levels[None, :] > levels[:, None]).long()
    cost = torch.where(fitted.T[:, None, :], cost[None], cost.new_tensor(4 * mean.shape[0]))  # (types, level, source)
    source = cost.argmin(-1).T  # (levels, types)
    types = torch.arange(mean.shape[1], device=mean.device)
    known = fitted.any(0)[None, :, None]
    return torch.where(known, mean[source, types], mean), torch.where(known, std[source, types], std)


def tap_features(coordinates: torch.Tensor) -> torch.Tensor:
    """Coordinate encodings of a kernel's taps: ``(taps, kernel ndim)`` -> ``(taps, MAX_KERNEL_DIMS * 2 *
    TAP_FREQUENCIES)``, zero-padded for kernels of fewer dimensions (a linear weight's one tap has none)."""
    taps, ndim = coordinates.shape
    features = coordinate_encoding(coordinates, TAP_FREQUENCIES).reshape(taps, ndim * 2 * TAP_FREQUENCIES)
    return nn.functional.pad(features, (0, (MAX_KERNEL_DIMS - ndim) * 2 * TAP_FREQUENCIES))


class ElementEmbedding(nn.Module):
    """An element (a set of kernel taps) ->
    ``out(mean_t relu(value(v_t) + coordinate(pos_t) [+ source(s)] [+ input(i)] [+ own(o)]))``.

    Mean pooling over taps makes it take any kernel size; the coordinate encoding tells taps
    apart, so a kernel is a set of (value, place) pairs and nothing about it is lost to order.
    With ``sources`` the element's source-neuron features ``s`` (see :mod:`sne.encoders.chunking`)
    enter inside the non-linearity, so a weight is read together with the neuron it comes from;
    with ``input_positions`` so does a first-layer weight's input coordinate ``i``, encoded as tap
    coordinates are; with ``own`` the features ``o`` of the neuron the element belongs to. Both
    neuron features include their gain column only with ``gains`` and their mean column only with
    ``means``; with ``phases`` a map of their phase columns enters too. With ``probes`` (a count
    ``P``) the element's ``2 P`` probe values ``p`` enter there too.
    """

    def __init__(self, hidden: int, sources: bool = False, input_positions: bool = False, own: bool = False,
                 gains: bool = False, means: bool = False, phases: bool = False, probes: int = 0) -> None:
        super().__init__()
        columns = [*range(NEURON_FEATURES_WITHOUT_GAINS), *[GAIN_COLUMN] * gains, *[MEAN_COLUMN] * means]
        # A slice where the columns are the first ones (no copy); the gainless mean column needs a list.
        self.neuron_columns = slice(len(columns)) if columns == list(range(len(columns))) else columns
        self.value = nn.Linear(1, hidden, bias=False)
        self.coordinate = nn.Linear(MAX_KERNEL_DIMS * 2 * TAP_FREQUENCIES, hidden)
        self.source = nn.Linear(len(columns), hidden, bias=False) if sources else None
        self.input = nn.Linear(2 * TAP_FREQUENCIES + 1, hidden, bias=False) if input_positions else None
        self.own = nn.Linear(len(columns), hidden, bias=False) if own else None
        self.out = nn.Linear(hidden, hidden)
        # Absent without probes (no draw), so such encoders initialise exactly as before the option existed.
        self.probe = nn.Linear(2 * probes, hidden, bias=False) if probes else None
        self.phase = None
        if phases and (sources or own):
            # Drawn aside from the global stream, and its features are zeros without sine layers: an
            # encoder reading phases initialises, and encodes every other network, as one that does not.
            with torch.random.fork_rng(devices=[]):
                self.phase = nn.Linear(len(PHASE_COLUMNS) * (sources + own), hidden, bias=False)

    def forward(
        self, values: torch.Tensor, coordinates: torch.Tensor, sources: torch.Tensor | None = None,
        input_positions: torch.Tensor | None = None, own: torch.Tensor | None = None,
        probes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``values`` (elements, taps), ``coordinates`` (taps, kernel ndim), ``sources`` (elements,
        SOURCE_FEATURES), ``input_positions`` (elements, INPUT_POSITION_FEATURES), ``own``
        (elements, OWN_FEATURES) and ``probes`` (elements, 2 P) when built with them -> (elements, hidden)."""
        # The coordinate term is shared by all elements of a kernel shape: computed once, broadcast.
        hidden = self.value(values.unsqueeze(-1)) + self.coordinate(tap_features(coordinates))
        if self.source is not None:
            if sources is None:
                raise SneError("this SNE encoder reads source-neuron features: prepare batches with its prepare()")
            hidden = hidden + self.source(sources[:, self.neuron_columns]).unsqueeze(1)
        if self.input is not None:
            if input_positions is None:
                raise SneError("this SNE encoder reads input positions: prepare batches with its prepare()")
            coordinate, flag = input_positions.unbind(-1)
            # Zeroed off the first layer: cos(0) = 1 would otherwise mark every element alike.
            encoded = coordinate_encoding(coordinate, TAP_FREQUENCIES) * flag.unsqueeze(-1)
            hidden = hidden + self.input(torch.cat([encoded, flag.unsqueeze(-1)], dim=-1)).unsqueeze(1)
        if self.own is not None:
            if own is None:
                raise SneError("this SNE encoder reads own-neuron features: prepare batches with its prepare()")
            hidden = hidden + self.own(own[:, self.neuron_columns]).unsqueeze(1)
        if self.phase is not None:
            phases = [features[:, PHASE_COLUMNS[0]:PHASE_COLUMNS[-1] + 1]
                      for features, read in ((sources, self.source), (own, self.own)) if read is not None]
            hidden = hidden + self.phase(torch.cat(phases, dim=-1)).unsqueeze(1)
        if self.probe is not None:
            if probes is None:
                raise SneError("this SNE encoder reads probe values: prepare batches with its prepare()")
            hidden = hidden + self.probe(probes).unsqueeze(1)
        return self.out(torch.relu(hidden).mean(dim=1))


class ElementDecoder(nn.Module):
    """(element code, network code) -> one value per tap of the element's kernel:
    ``out(relu(mix(relu(element + network(n) + coordinate(pos_t)))))``.

    The mirror of :class:`ElementEmbedding`: the tap's coordinate encoding says which value to
    decode, so a kernel of any size decodes. ``out`` starts at zero (the untrained head outputs 0).
    """

    def __init__(self, hidden: int, element_width: int | None = None) -> None:
        super().__init__()
        width = element_width or hidden
        self.network = nn.Linear(hidden, width)
        self.coordinate = nn.Linear(MAX_KERNEL_DIMS * 2 * TAP_FREQUENCIES, width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, elements: torch.Tensor, networks: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
        """``elements`` and ``networks`` (elements, hidden), ``coordinates`` (taps, kernel ndim) -> (elements, taps)."""
        codes = (elements + self.network(networks)).unsqueeze(1)
        hidden = torch.relu(codes + self.coordinate(tap_features(coordinates)))
        return self.out(torch.relu(self.mix(hidden))).squeeze(-1)


class SetStack(nn.Module):
    """``depth`` SABs, or with ``set_functions=False`` as many per-element residual MLPs."""

    def __init__(self, hidden: int, heads: int, depth: int, layer_norm: bool | str, set_functions: bool,
                 qk_norm: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SAB(hidden, heads, layer_norm, qk_norm) if set_functions else ResidualFF(hidden, layer_norm)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


class SetPool(nn.Module):
    """Set -> vector: PMA (``seeds`` learned queries), or with ``set_functions=False`` the masked
    mean; with ``statistics`` also the set's mean, max, min and standard deviation. Where that makes
    more than one vector, a linear map merges them.

    With ``batch_norm`` the pooled codes are batch-normalised across the batch's sets. Pooling
    averages, and what all networks share (positional encodings, PMA seeds) dwarfs what sets them
    apart: measured at initialisation, differences between networks shrank ~20x per stage, to
    1e-7 of the code at z, and training sat at the mean predictor until they grew back. Batch
    normalisation removes the shared part and restores unit spread after every stage.
    """

    def __init__(self, hidden: int, heads: int, layer_norm: bool | str, set_functions: bool, batch_norm: bool,
                 seeds: int = 1, statistics: bool = False, qk_norm: bool = False) -> None:
        super().__init__()
        self.pma = PMA(hidden, heads, seeds=seeds, layer_norm=layer_norm, qk_norm=qk_norm) if set_functions else None
        # Absent at one seed and no statistics, so checkpoints of that configuration keep their keys.
        pieces = (seeds if set_functions else 1) + (len(SET_STATISTICS) if statistics else 0)
        self.merge = nn.Linear(pieces * hidden, hidden) if pieces > 1 else None
        self.statistics = statistics
        self.norm = nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pool(x, mask))

    def norm_like(self, reference: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` normalised as :attr:`norm` normalised ``reference`` (in training: with the batch
        statistics of ``reference``; in eval: with the running ones), without updating anything."""
        norm = self.norm
        if not isinstance(norm, nn.BatchNorm1d):
            return norm(x)
        if self.training:
            mean, var = reference.mean(0), reference.var(0, unbiased=False)
        else:
            mean, var = norm.running_mean, norm.running_var
        x = (x - mean) * torch.rsqrt(var + norm.eps)
        return x * norm.weight + norm.bias if norm.affine else x

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pooled codes before batch normalisation: a run of sets pooled apart, then normalised
        together, gives exactly the codes and statistics of one call."""
        pooled = masked_mean(x, mask) if self.pma is None else self.pma(x, mask).flatten(1)
        if self.statistics:
            pooled = torch.cat([pooled, set_statistics(x, mask)], dim=-1)
        return pooled if self.merge is None else self.merge(pooled)


def _gather_sets(values: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter rows of ``values`` to their ``slot`` in a zero-padded ``(*mask.shape, dim)`` tensor."""
    padded = values.new_zeros(mask.numel(), values.shape[-1]).index_copy(0, slot, values)
    return padded.view(*mask.shape, values.shape[-1])


@register_encoder("sne")
class SNEEncoder(Encoder):
    """Set-based neural network encoder; takes networks of any architecture.

    Options (see :data:`DEFAULT_OPTIONS`): ``chunk_size`` elements per chunk; ``hidden`` width of
    every set block; ``heads`` attention heads; ``num_sab`` SABs per stage; ``out_dim`` size of z;
    ``layer_norm`` in the set blocks (``true``/``post`` after each residual sum, ``pre`` on each
    branch's input: :mod:`sne.encoders.set_blocks`; off by default: pooling by attention alone,
    ``pre`` was the better SNE on 3000 training INRs and the worse on 600, three seeds each,
    docs/RESULTS.md); ``qk_norm`` layer-normalises each head's queries and keys, which bounds the
    attention logits (:mod:`sne.encoders.set_blocks`). Unbounded, they can grow until softmaxes saturate
    and a run sits at the mean predictor (scripts/attention_logits.py): with it every seed learned on the
    recipe-shift zoo's 600 training INRs (without, one of three sat at the mean), but on the INR table's
    3000 it was the worse SNE (normalised MSE 0.067 against 0.060, three seeds each), and on zoos of mixed
    initial scale runs sat at the mean with it too; so it is off by default: try it when a run does not
    leave the mean. Ablation switches, on by default: ``use_type_encoding``, ``use_level_encoding``, ``use_set_functions`` (off: per-element MLPs
    and mean pooling instead of SABs and PMA), ``use_hierarchy`` (off: all chunk codes of a network form
    one set for the network encoder). ``use_chunk_index_encoding`` and ``use_row_slot_encoding`` (off by
    default, on in the paper) encode neuron order, which a neuron permutation changes and the network's
    function does not: without them SNE is exactly invariant to hidden-neuron permutations where every
    chunk holds one neuron's incoming elements or a whole layer part, and every part fits one
    ``part_window`` (a SIREN of width ``chunk_size``); elsewhere which neurons share a chunk or window
    still follows their order, so invariance is approximate.
    ``use_source_features`` (on by default; off in the paper): every weight also carries features
    of the neuron it comes from (:mod:`sne.encoders.chunking`, "Source neurons"), the cross-layer
    link that a row-as-set encoding otherwise loses. ``use_input_positions`` (off by default, as in
    the paper): every first-layer weight also carries its input's coordinate (:mod:`sne.encoders.chunking`,
    "Input positions"), so the inputs of a 2-D INR are told apart. ``use_own_neuron_features`` (on by
    default; off in the paper): every weight and bias also carries features of the neuron it belongs
    to as the next layer reads it (:mod:`sne.encoders.chunking`, "Own neurons"), the link in the other
    direction.
    Non-chain records: source features and input positions are given where they are defined
    (see :mod:`sne.encoders.chunking`) and are zeros elsewhere, which in residual and attention
    networks is most layers.
    ``standardize_layers``: standardise each layer part's values and give the encoder the part's
    mean and log standard deviation instead (see :mod:`sne.encoders.chunking`, "Scale").
    ``batch_norm``: batch-normalise the pooled codes of every stage (see :class:`SetPool`); codes
    then depend on the batch in training mode only (eval mode uses running statistics).
    ``chunk_micro_batch``: when training, embed and encode this many chunks at a time with
    gradient checkpointing, trading recomputation for memory: activations of one micro-batch
    instead of all the batch's chunks. Batch normalisation of the chunk codes runs once over all
    runs, so micro-batching changes neither codes nor gradients nor running statistics.
    ``part_window``: chunks pooled together in the part stage (:meth:`_part_codes`); ``None`` is the
    paper's stage, one set per part, whose cost grows with the square of a layer's size.
    ``chunk_hidden``: width of the element and chunk stages (32 by default; ``None``, the paper's:
    ``hidden``; a width above a smaller ``hidden`` given is cut to it), with heads of the other
    stages' width; their codes are projected to ``hidden`` after the chunk pool. That stage runs
    once per ``chunk_size`` parameters and costs nearly all of SNE's FLOPs, so halving its width
    quarters them. At width 32 and pooling by attention alone SNE did not learn on 600-network zoos
    in 30 epochs (it did on 3000); with ``pool_statistics`` it does.
    ``chunk_sab``: SABs in each of the chunk stage's two set-to-set steps (1 by default; ``None``:
    ``num_sab``, the paper's); the other cost knob of that stage, linear in it. ``preset=wide`` sets
    both as the paper has them.
    ``canonical_order``: encode every plain chain in canonical neuron order
    (:func:`sne.weights.canonicalize_hidden`: each hidden layer's neurons sorted by the norm of their
    parameters), so all functionally-equivalent permutations of a chain get the same code, and the
    chunk-index encoding says a neuron's rank instead of an arbitrary place. Networks that are not
    plain chains are encoded as they are. Weight-space outputs are put back in each network's own order.
    ``canonical_signs`` (off by default, absent in the paper): encode every network with the
    canonical signs of its neurons whose activation is odd (:func:`sne.weights.canonical_signs`:
    each such neuron's incoming weights made to have a non-negative sum of cubes), so all its
    sign-flipped copies get the same code, exactly, where sign-flip training and test-time flips
    teach and average that invariance approximately. Weight-space outputs are put back in each
    network's own signs.
    Inference (:meth:`plan`) encodes :data:`INFERENCE_CHUNKS` chunks at a time whatever the options.
    ``source_code_rounds``: rounds of learned links between layers (0: none, as in the paper). In
    each round every neuron of a plain linear or convolution layer gets a code, the mean of its
    elements' embeddings (its incoming weights and bias) through a linear map and ReLU, and every
    weight adds the code of the neuron its input comes from (:mod:`sne.encoders.chunking`, "Neuron
    links") before the chunk encoder; a round sees the previous round's codes, so ``r`` rounds reach
    ``r`` layers back. Ids move with the weights, so the links survive any neuron permutation.
    ``chunk_link_passes``: passes of the chunk encoder that each see the previous pass's neuron codes
    (0: one pass, as in the paper). A neuron's code is the mean of its elements' codes (its incoming
    weights and bias) after the chunk encoder's set-to-set stages; in the next pass every weight adds
    a learned map of the code of the neuron its input comes from (the links of ``source_code_rounds``),
    so a layer's chunks read what the chunk encoder made of the neurons they read, not only their
    features: the second pass the SNE issue names. Each pass costs one chunk stage; the maps start at
    zero, so an untrained encoder encodes as it does without them. Off by default: one pass on the INR
    table (30 epochs, seed 0) learned more slowly and ended worse, normalised MSE 0.089 against 0.058
    (docs/RESULTS.md).
    ``level_origin``: where layer levels count from, for the level encoding and the layer-statistics
    tables: ``"input"`` (the paper: a network's first layer is level 0) or ``"output"`` (its deepest
    layer is level 0), so that the output layers of networks of different depths read alike, as
    a 4-layer CNN's and a 40-layer ViT's heads do not when counted from the input.
    ``use_activation_encoding`` (off by default, absent in the paper): every chunk's context also
    gets a learned code of its layer's activation (:data:`~sne.weights.record.ACTIVATIONS`; a record
    that does not say reads "unknown"), as Neural Graphs' nodes do; the weights of a ReLU and a tanh
    network can look alike and mean different functions.
    ``use_shape_features`` (off by default, absent in the paper): every chunk's context also gets a
    learned map of its part's log fan-in and log rows (:mod:`sne.encoders.chunking`, "Shape"), the
    sizes that attention pooling cannot count and against which a part's spread means something.
    ``use_residual_features`` (off by default): source and own-neuron features also where a layer
    reads a residual sum (:mod:`sne.encoders.chunking`, "Residual sums"), where otherwise they are zeros.
    ``use_neuron_gains`` (on by default, where either neuron feature is): source and own-neuron
    features also carry the log norm of the neuron's raw weights (:mod:`sne.encoders.chunking`,
    "Gains"), the scale that standardising each part removes (a SIREN neuron's frequency).
    ``use_neuron_means`` (off by default; needs a neuron feature): they also carry the signed mean of
    the neuron's standardised weights (:mod:`sne.encoders.chunking`, "Means"), the sign that rms
    features drop (a SIREN neuron's direction).
    ``use_neuron_phases`` (on by default, where either neuron feature is; absent in the paper): a
    learned map of each neuron's phase, ``sin`` and ``cos`` of ``w0 b`` for a neuron of a sine layer
    (:mod:`sne.encoders.chunking`, "Phases"), joins the element embedding: a bias wraps around many
    periods, which a standardised value says only through a function a few ReLUs cannot draw.
    On the INR table (3000 training INRs, 30 epochs, batch 16) it took default SNE's normalised MSE from
    0.060 ± 0.001 to 0.037 ± 0.006 (seeds 0-2: 0.031 / 0.036 / 0.045), below NG-GNN's 0.046 ± 0.002
    (docs/RESULTS.md); bare state_dicts of the same INRs, read without phases, scored 0.15 (seed 0).
    Read from the weights and what the record says of its activations (no forward pass); networks
    without sine layers get zeros and encode exactly as without the option (its map is drawn aside
    from the global random stream), so the CNN tables keep their numbers. A bare state_dict names
    no activations: a run that learned phases predicts it without them, and ``sne predict`` / ``sne
    embed`` say so (:meth:`caveat`).
    ``preserve_chunk_scale`` (off by default): where the chunk stage is narrower than ``hidden``, the
    projection of its batch-normalised codes to ``hidden`` starts variance-preserving instead of at
    PyTorch's default, which cuts their variance to a third. Tried against SNE at width 32 predicting
    the mean on a small zoo; it did not reliably fix that (docs/RESULTS.md, recipe shift).
    ``pool_seeds`` (1 by default, as in the paper): learned seeds of every stage's PMA; with more
    than one, each seed pools the set its own way and a linear map merges their outputs.
    ``pool_statistics`` (on by default; absent in the paper): every stage's pooled code also gets the
    mean, max, min and standard deviation of its set (:func:`~sne.encoders.set_blocks.set_statistics`,
    the aggregators of Neural Graphs' PNA layers), merged with the PMA's output by a linear map.
    Attention pooling is a weighted mean, and extremes and spread were what it missed: on 1000
    training INRs (20 epochs) they cut SNE's test error from 0.231 to 0.142 (docs/RESULTS.md).
    ``probe_points`` (0, off, by default): every weight and bias also carries its neurons' values at
    that many fixed inputs (:mod:`sne.encoders.chunking`, "Probe values"): a forward pass without
    data, which reads what a network computes where its weights alone say it ambiguously (SIREN's
    hidden layers far from their initial scale). Measured (docs/RESULTS.md): 16 probes took the INR
    table's normalised MSE from 0.060 to 0.0002 (seed 0), and, trained on sine INRs of random phases and
    initial scales, ranked the foreign networks (code the team had not seen) with tau 0.94 / 0.90 / 0.72
    (three seeds; the third sat at the mean for its first epochs), and 0.93 / 0.91 / 0.92 at batch 64,
    where SNE on weights alone reached 0.29 at best (any run, any training zoo); trained on the
    in-recipe zoo alone they ranked them at -0.05 (every training network there fits an odd function,
    the foreign ones do not). 4 probes sat at the mean (seed 0); 32 did as well as 16.
    Off by default because SNE reads weights: it takes only chains of linear layers with known
    activations, and refuses other records (a bare state_dict names no activations: ``--arch``).
    ``preset``: a name in :data:`PRESETS` whose options apply under those given (``preset=paper``).
    """

    weight_outputs = True
    default_options = DEFAULT_OPTIONS
    presets = PRESETS
    #: Batch norm after every pooling stage makes four stacked running averages that lag the model:
    #: re-estimated after every epoch (TrainConfig.bn_recalibration) they matched the training loss.
    #: Sign flips of neurons with odd activations (a no-op elsewhere) cut the INR table's error from
    #: 0.095 to 0.077 (three seeds) and raised the 600-INR recipe shift's in-recipe tau from 0.59 to 0.71 (docs/RESULTS.md);
    #: averaging each prediction over 16 flipped copies (test_time_flips) took the same runs to 0.065.
    #: Flips are chosen per zoo (``"auto"``, :func:`sne.train.run.choose_sign_flips`): on digit INRs
    #: fitted from one shared initialisation they cut accuracy from 0.79 to 0.42 (three seeds each).
    #: Batch 16 (four times the Adam steps of 64 in the same epochs, at about the same time per epoch)
    #: took them to 0.060 ± 0.002, and Wild Park's tau from 0.49 to 0.56; on the regenerated CNN tables
    #: (three seeds each) it was level: cross-dataset 0.678 ± 0.004 against 0.682 ± 0.004,
    #: cross-architecture 0.474 ± 0.010 against 0.476 ± 0.008 (docs/RESULTS.md).
    #: The rate stays at 1e-3 and what is validated, kept and tested is an exponential moving average
    #: of the weights over about 2 epochs (``schedule="constant"``, ``ema_epochs=2``), not the weights
    #: after a multistep decay: on the regenerated CNN tables (three seeds each) cross-dataset tau rose
    #: from 0.678 ± 0.004 to 0.683 ± 0.004 (higher on every seed) and cross-architecture tau from
    #: 0.474 ± 0.010 to 0.483 ± 0.007 (at five seeds each, beside NG-GNN at five: cross-dataset 0.687 ±
    #: 0.006 against 0.687 ± 0.005, cross-architecture 0.479 ± 0.010 against 0.475 ± 0.03); the INR
    #: table's error stayed level (0.060 ± 0.001 against 0.060 ± 0.002). Averaging after a multistep
    #: decay changed nothing at the end (INR seed 0: 0.059 against 0.059; cross-dataset 0.682 against
    #: 0.683, seed 0). Cosine decay
    #: after one warm-up epoch (``--schedule cosine --warmup-epochs 1``) won on small INR zoos (600:
    #: 0.149 ± 0.03 against multistep's 0.251 ± 0.08; recipe-shift mean tau 0.465 against 0.379) and
    #: lost cross-architecture transfer on every seed (0.450 ± 0.007).
    #: Under this schedule batch 64 was the better batch on the INR table (0.057 ± 0.002 against 0.060 ±
    #: 0.001, lower on every seed) and on sine INRs of mixed initial scales, where runs at 16 sat at the
    #: mean; but on the shared digit INRs (1078 training networks, 17 steps an epoch at 64) 16 won, 0.825 /
    #: 0.789 against 0.708 / 0.681 (seeds 0-1), as it did on Wild Park at 5 epochs (0.56 against 0.49, before
    #: this schedule); so 16 stays, and the CNN tables are not measured at 64 with it (docs/RESULTS.md).
    default_train_options = {"permutation_augment": True, "bn_recalibration": 16, "sign_flip_augment": "auto",
                             "test_time_flips": 16, "batch_size": 16, "schedule": "constant", "ema_epochs": 2.0}
    defaults_of_older_configs = {"chunk_hidden": None, "chunk_sab": None, "use_source_features": False,
                                 "use_own_neuron_features": False, "use_chunk_index_encoding": True,
                                 "use_row_slot_encoding": True,
                                 "use_neuron_gains": False, "pool_statistics": False,
                                 "use_neuron_phases": False}

    @classmethod
    def train_defaults(cls, options: dict[str, Any]) -> dict[str, Any]:
        """:attr:`default_train_options`, under those of the preset in ``options`` (:data:`PRESET_TRAINING`)."""
        return {**cls.default_train_options, **PRESET_TRAINING.get(options.get("preset"), {})}

    @classmethod
    def options_baseline(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The defaults, under those of the preset in ``options``: a paper-preset row names only
        what it changes from the paper. The chunk stage is never wider than a smaller ``hidden``
        given: its codes are projected to ``hidden``, and at a fixed head width a wider stage only
        adds heads (hidden 8 under a stage of width 32 ran 16 heads of width 2, 2.5x the time). Neuron
        gains are off where both neuron features are (they are columns of those); a chunk stage at
        the full width has no projection, so ``preserve_chunk_scale`` means nothing there."""
        baseline = {**DEFAULT_OPTIONS, **PRESETS.get(options.get("preset"), {})}
        hidden, chunk = options.get("hidden", baseline["hidden"]), baseline["chunk_hidden"]
        if chunk is not None and isinstance(hidden, int) and 0 < hidden < chunk:
            baseline["chunk_hidden"] = hidden
        if not any(options.get(name, baseline[name]) for name in ("use_source_features", "use_own_neuron_features")):
            baseline.update(use_neuron_gains=False, use_neuron_means=False, use_neuron_phases=False)
        width = options.get("chunk_hidden", baseline["chunk_hidden"])
        if width is None or width == hidden:
            baseline["preserve_chunk_scale"] = options.get("preserve_chunk_scale", baseline["preserve_chunk_scale"])
        return baseline

    def __init__(self, *, architecture: Architecture | None = None, **options: Any) -> None:
        preset = options.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise SneError(f"unknown SNE preset {preset!r} (presets: {', '.join(PRESETS)})")
        unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
        if unknown:
            raise SneError(f"unknown SNE option(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_OPTIONS)})")
        resolved = {k: v for k, v in self.resolved_options({**options, "preset": preset}).items() if k != "preset"}
        _validate(resolved)
        super().__init__(architecture=architecture, **resolved)
        hidden, heads, depth, norm = resolved["hidden"], resolved["heads"], resolved["num_sab"], resolved["layer_norm"]
        sets, qk = resolved["use_set_functions"], resolved["qk_norm"]
        self.out_dim = resolved["out_dim"]
        self.hidden = hidden
        # The chunk stage runs once per 32 parameters and costs nearly all of SNE's FLOPs: its
        # width is the one knob that makes large networks and training cheaper (chunk_hidden).
        self.chunk_width = chunk = resolved["chunk_hidden"] or hidden
        self.element_embedding = ElementEmbedding(
            chunk, sources=resolved["use_source_features"], input_positions=resolved["use_input_positions"],
            own=resolved["use_own_neuron_features"], gains=resolved["use_neuron_gains"],
            means=resolved["use_neuron_means"], phases=resolved["use_neuron_phases"], probes=resolved["probe_points"],
        )
        self.part_scale = nn.Linear(2, chunk) if resolved["standardize_layers"] else None
        # Statistics of part_stats per (level, chunk type) over the training networks: differences
        # between networks are tiny next to differences between layers, so each layer's statistics
        # are standardised against those of the same layer in other networks. Identity until fitted.
        self.register_buffer("stats_mean", torch.zeros(MAX_NORMALIZED_LEVELS, NUM_CHUNK_TYPES, 2))
        self.register_buffer("stats_std", torch.ones(MAX_NORMALIZED_LEVELS, NUM_CHUNK_TYPES, 2))
        # Whether some training network had a sine layer, whose phases this encoder then learned to read.
        self.register_buffer("trained_on_sines", torch.tensor(False))
        # Heads of the same width as elsewhere: attention over 32 elements costs per head, not per width.
        chunk_heads = chunk_heads_for(resolved)
        chunk_depth = depth if resolved["chunk_sab"] is None else resolved["chunk_sab"]
        pooling = (resolved["pool_seeds"], resolved["pool_statistics"])
        self.chunk_stack_1 = SetStack(chunk, chunk_heads, chunk_depth, norm, sets, qk_norm=qk)
        self.chunk_stack_2 = SetStack(chunk, chunk_heads, chunk_depth, norm, sets, qk_norm=qk)
        self.chunk_pool = SetPool(chunk, chunk_heads, norm, sets, resolved["batch_norm"], *pooling, qk_norm=qk)
        # Absent at the paper's width, so its checkpoints keep their keys.
        self.chunk_out = nn.Linear(chunk, hidden) if chunk != hidden else None
        if self.chunk_out is not None and resolved["preserve_chunk_scale"]:
            # Rescaled, not redrawn: every other parameter's initialisation stays as it was. PyTorch's
            # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) has variance 1/(3 fan_in); unit-variance codes keep
            # their variance through weights of variance 1/fan_in.
            with torch.no_grad():
                self.chunk_out.weight.mul_(3**0.5)
                self.chunk_out.bias.zero_()
        rounds = resolved["source_code_rounds"]
        self.neuron_in = nn.ModuleList(nn.Linear(chunk, chunk) for _ in range(rounds)) if rounds else None
        self.source_out = nn.ModuleList(nn.Linear(chunk, chunk, bias=False) for _ in range(rounds)) if rounds else None
        passes = resolved["chunk_link_passes"]
        self.chunk_links = nn.ModuleList(nn.Linear(chunk, chunk, bias=False) for _ in range(passes)) if passes else None
        for link in self.chunk_links or ():
            nn.init.zeros_(link.weight)
        if resolved["use_hierarchy"]:
            self.part_stack = SetStack(hidden, heads, depth, norm, sets, qk_norm=qk)
            self.part_pool = SetPool(hidden, heads, norm, sets, resolved["batch_norm"], *pooling, qk_norm=qk)
            self.merge_stack = SetStack(hidden, heads, 1, norm, sets, qk_norm=qk)
            self.merge_pool = SetPool(hidden, heads, norm, sets, resolved["batch_norm"], *pooling, qk_norm=qk)
        self.network_stack = SetStack(hidden, heads, depth, norm, sets, qk_norm=qk)
        self.network_pool = SetPool(hidden, heads, norm, sets, resolved["batch_norm"], *pooling, qk_norm=qk)
        self.readout = nn.Linear(hidden, self.out_dim)
        # Learned merge tokens (residual sum, concatenation; sne.encoders.chunking, "Merge tokens"),
        # initialised without drawing random numbers, so every other parameter's initialisation,
        # and whatever the caller draws next, stays as it was before they existed.
        self.merge_tokens = nn.Parameter(sinusoidal_encoding(torch.arange(NUM_MERGE_TOKENS), hidden))
        # Likewise, far along the sinusoidal axis from the type and level codes they are added to.
        self.activation_codes = nn.Parameter(
            sinusoidal_encoding(torch.arange(len(ACTIVATIONS)) + ACTIVATION_POSITION_OFFSET, chunk)
        ) if resolved["use_activation_encoding"] else None
        self.part_shape = nn.Linear(2, chunk) if resolved["use_shape_features"] else None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Read checkpoints of the first release too: their chunk-type statistics cover its eight
        types (the new types get the identity, as before fitting) and they have no merge tokens
        (this encoder's initial ones are kept: chains, all that release read, use none). Levels
        their training networks lacked are filled as :func:`fill_unseen_levels` says."""
        if prefix + "readout.weight" in state_dict:
            for name, fill in (("stats_mean", 0.0), ("stats_std", 1.0)):
                old = state_dict.get(prefix + name)
                if isinstance(old, torch.Tensor) and old.dim() == 3 and old.shape[1] < NUM_CHUNK_TYPES:
                    new = torch.full((old.shape[0], NUM_CHUNK_TYPES, old.shape[2]), fill, dtype=old.dtype,
                                     device=old.device)
                    new[:, : old.shape[1]] = old
                    state_dict[prefix + name] = new
            state_dict.setdefault(prefix + "merge_tokens", self.merge_tokens.detach().clone())
            # From before the flag: such encoders read no phases, so nothing is to be said.
            state_dict.setdefault(prefix + "trained_on_sines", torch.tensor(False))
        mean, std = state_dict.get(prefix + "stats_mean"), state_dict.get(prefix + "stats_std")
        if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and mean.shape == std.shape == self.stats_mean.shape:
            # Checkpoints from before the fill read unseen levels raw; they load as if fitted today.
            state_dict[prefix + "stats_mean"], state_dict[prefix + "stats_std"] = fill_unseen_levels(mean, std)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def caveat(self, record: NetworkRecord) -> str | None:
        """Where this encoder learned sine phases and ``record`` names no activation for some layer (a
        bare state_dict): its phases read as zeros, as no training network's did."""
        if self.element_embedding.phase is None or not bool(self.trained_on_sines):
            return None
        if all(layer.activation is not None for layer in record.layers):
            return None
        return ("its layers name no activations (a bare state_dict), so this encoder, trained on sine layers, "
                "reads no phases in it; give the network's module with --arch, or --arch run to read it as "
                "the architecture the run was trained on")

    def check_records(self, records: Sequence[NetworkRecord]) -> None:
        for record in records:
            for layer in record.layers:
                check_layer(layer, record.source)
            if self.options["probe_points"]:
                check_probeable(record)

    def prepare_weights(self, records: Sequence[NetworkRecord]) -> WeightBatch:
        """Weight-space outputs give one weight and one bias per layer, so
        they take records of linear and convolution layers with only those tensors."""
        for record in records:
            for layer in record.layers:
                extra = sorted(set(layer.tensors) - {"weight", "bias"})
                if layer.kind not in CHAIN_KINDS or extra:
                    what = f"tensor '{extra[0]}'" if extra else "no weight-and-bias layout"
                    raise SneError(
                        f"{record.source}: SNE's weight-space outputs take linear and convolution layers with a "
                        f"weight and a bias only; layer '{layer.name or '<root>'}' of kind '{layer.kind}' has {what}"
                    )
        return super().prepare_weights(records)

    @torch.no_grad()
    def fit_input_statistics(self, records: Sequence[NetworkRecord]) -> None:
        self.trained_on_sines.fill_(any(layer.activation == "sine" for record in records for layer in record.layers))
        if self.part_scale is None:
            return
        self.stats_mean.zero_()
        self.stats_std.fill_(1.0)
        stats_by_key: dict[tuple[int, int], list[torch.Tensor]] = {}
        for record in self._in_encoded_form(records):  # canonical signs change the parts' means
            deepest = max(layer.level for layer in record.layers)
            for layer in record.layers:
                level = deepest - layer.level if self.options["level_origin"] == "output" else layer.level
                if level < MAX_NORMALIZED_LEVELS:
                    for part in layer_parts(layer, record.source):
                        stats_by_key.setdefault((level, part.type), []).append(part.stats)
        for (level, kind), stats in stats_by_key.items():
            mean, std = mean_std(torch.stack(stats), dim=0, floor=STATS_STD_FLOOR)
            self.stats_mean[level, kind] = mean.to(self.stats_mean.dtype)
            self.stats_std[level, kind] = std.to(self.stats_std.dtype)
        filled_mean, filled_std = fill_unseen_levels(self.stats_mean, self.stats_std)
        self.stats_mean.copy_(filled_mean)
        self.stats_std.copy_(filled_std)

    def _normalized_part_stats(self, batch: ChunkBatch, first: int, last: int) -> torch.Tensor:
        stats = batch.part_stats[batch.chunk_part[first:last]]
        kinds, levels = batch.chunk_type[first:last], self._levels(batch, first, last)[0]
        # Deeper levels than the tables hold read the deepest, which holds the nearest fitted level's.
        levels = levels.clamp_max(MAX_NORMALIZED_LEVELS - 1)
        mean, std = self.stats_mean[levels, kinds], self.stats_std[levels, kinds]
        return (stats - mean.to(stats.dtype)) / std.to(stats.dtype)

    def _in_encoded_form(self, records: Sequence[NetworkRecord]) -> Sequence[NetworkRecord]:
        if self.options["canonical_order"]:
            records = [_canonical(r) for r in records]
        if self.options["canonical_signs"]:
            records = [canonicalize_signs(r) for r in records]
        return records

    def prepare(self, records: Sequence[NetworkRecord]) -> ChunkBatch:
        self.check_records(records)
        return pad_chunk(
            self._in_encoded_form(records), self.options["chunk_size"], dtype=self.readout.weight.dtype,
            standardize=self.options["standardize_layers"], source_features=self.options["use_source_features"],
            input_positions=self.options["use_input_positions"], neuron_links=self._links_neurons(),
            own_features=self.options["use_own_neuron_features"], through_sums=self.options["use_residual_features"],
            probe_points=self.options["probe_points"],
        )

    def plan(self, records: Sequence[NetworkRecord]) -> ChunkPlan:
        """Like :meth:`prepare`, with elements made on demand while encoding: for inference on large
        networks, whose elements never exist all at once (only their chunk codes do)."""
        self.check_records(records)
        return plan_chunks(
            self._in_encoded_form(records), self.options["chunk_size"], dtype=self.readout.weight.dtype,
            standardize=self.options["standardize_layers"], source_features=self.options["use_source_features"],
            input_positions=self.options["use_input_positions"], neuron_links=self._links_neurons(),
            own_features=self.options["use_own_neuron_features"], through_sums=self.options["use_residual_features"],
            probe_points=self.options["probe_points"],
        )

    prepare_inference = plan

    def _links_neurons(self) -> bool:
        return self.options["source_code_rounds"] > 0 or self.options["chunk_link_passes"] > 0

    def forward(self, batch: ChunkBatch | ChunkPlan) -> torch.Tensor:
        return self.readout(self._network_codes(batch)[0])

    def _network_codes(
        self, batch: ChunkBatch | ChunkPlan, keep_elements: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled network codes (B, hidden); with ``keep_elements`` also every element's code
        before the chunk PMA, (N, c, hidden)."""
        opts = self.options
        dtype = self.readout.weight.dtype
        codes, elements = self._chunk_codes(batch, dtype, keep_elements)
        if isinstance(batch, ChunkPlan):
            batch = batch.skeleton
        if opts["use_chunk_index_encoding"]:
            codes = codes + self._encode(batch.chunk_index, dtype)
        tokens = self.merge_tokens.to(dtype)[batch.token_kind]
        if opts["use_hierarchy"]:
            parts = self._part_codes(codes, batch)
            # A layer's set: its part codes, then its merge tokens (none in a chain).
            members = torch.cat([parts, tokens])
            slots = torch.cat([batch.part_layer_slot, batch.token_layer_slot])
            layer_sets = _gather_sets(members, slots, batch.layer_mask)
            layers = self.merge_pool(self.merge_stack(layer_sets, batch.layer_mask), batch.layer_mask)
            if opts["use_level_encoding"]:
                layers = layers + self._encode(self._levels(batch)[1], dtype)
            sets, mask = _gather_sets(layers, batch.layer_network_slot, batch.network_mask), batch.network_mask
        else:
            # Without the hierarchy the tokens join the network's chunk codes, with their layer's level.
            if opts["use_level_encoding"]:
                tokens = tokens + self._encode(self._levels(batch)[2] + LEVEL_POSITION_OFFSET, dtype)
            members = torch.cat([codes, tokens])
            slots = torch.cat([batch.chunk_network_slot, batch.token_network_slot])
            sets = _gather_sets(members, slots, batch.network_chunk_mask)
            mask = batch.network_chunk_mask
        return self.network_pool(self.network_stack(sets, mask), mask), elements

    def _levels(self, batch: ChunkBatch, first: int = 0, last: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Levels of chunks ``first:last``, of all layers and of all merge tokens of the batch, counted
        as ``level_origin`` says (each run of chunks reads its own slice: the cost stays linear)."""
        chunks = slice(first, last)
        if self.options["level_origin"] == "input":
            return batch.chunk_level[chunks], batch.layer_level, batch.token_level
        layer_network = batch.layer_network_slot // batch.network_mask.shape[1]
        deepest = torch.zeros(batch.network_mask.shape[0], dtype=batch.layer_level.dtype, device=layer_network.device)
        deepest = deepest.scatter_reduce(0, layer_network, batch.layer_level, "amax", include_self=False)
        width = batch.network_chunk_mask.shape[1]
        return (deepest[batch.chunk_network_slot[chunks] // width] - batch.chunk_level[chunks],
                deepest[layer_network] - batch.layer_level, deepest[batch.token_network_slot // width] - batch.token_level)

    def _encode(self, positions: torch.Tensor, dtype: torch.dtype, width: int | None = None) -> torch.Tensor:
        return sinusoidal_encoding(positions, width or self.hidden, dtype=dtype)

    def _part_codes(self, codes: torch.Tensor, batch: ChunkBatch) -> torch.Tensor:
        """Part codes (P, hidden) from chunk codes (N, hidden).

        ``part_window=None`` is the paper's stage: one set per part, whose attention costs the
        square of the part's chunk count (a 4096 x 4096 layer is one set of 524,288 chunks). Else
        a part's chunks are pooled in windows of ``part_window`` consecutive chunks, the window
        codes (with their window index encoded, as chunks have theirs) again in windows, and so on
        until one code per part remains: cost linear in the chunks, with no largest layer. The
        same blocks serve every level, and the first level's batch normalisation normalises all
        (an upper level may hold one window in a batch). A part of at most ``part_window`` chunks is one window, so
        where no part is longer the two stages are the same function.
        """
        window = self.options["part_window"]
        if window is None:
            parts = _gather_sets(codes, batch.chunk_part_slot, batch.part_mask)
            return self.part_pool(self.part_stack(parts, batch.part_mask), batch.part_mask)
        num_parts = batch.part_mask.shape[0]
        item_part, position = batch.chunk_part, batch.chunk_index
        result = codes.new_empty(num_parts, codes.shape[1])
        first_level = None
        while True:
            counts = torch.bincount(item_part, minlength=num_parts)
            width = min(window, int(counts.max()))
            # Items come sorted by (part, position): a window starts where either changes window.
            window_key = item_part * (int(position.max()) // window + 1) + position // window
            starts = torch.ones_like(window_key, dtype=torch.bool)
            starts[1:] = window_key[1:] != window_key[:-1]
            window_id = starts.cumsum(0) - 1
            num_windows = int(window_id[-1]) + 1
            sizes = torch.bincount(window_id, minlength=num_windows)
            mask = torch.arange(width, device=codes.device) < sizes[:, None]
            # Runs of windows, as chunks go in runs: the activations of one run at a time.
            bounds = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]).tolist()
            pooled = []
            for a in range(0, num_windows, WINDOW_RUN):
                b = min(a + WINDOW_RUN, num_windows)
                items = slice(bounds[a], bounds[b])
                sets = _gather_sets(codes[items], (window_id[items] - a) * width + position[items] % window, mask[a:b])
                pooled.append(self.part_pool.pool(self.part_stack(sets, mask[a:b]), mask[a:b]))
            pooled = torch.cat(pooled)
            if first_level is None:
                first_level, pooled = pooled, self.part_pool.norm(pooled)
            else:
                # Upper levels may hold a single window: they take the first level's normalisation.
                pooled = self.part_pool.norm_like(first_level, pooled)
            window_part = item_part[starts]
            finished = counts[window_part] <= window
            # Under autocast the pooled codes may come out in another dtype than the chunk codes.
            result[window_part[finished]] = pooled[finished].to(result.dtype)
            if bool(finished.all()):
                return result
            item_part, position = window_part[~finished], (position[starts] // window)[~finished]
            codes = pooled[~finished]
            if self.options["use_chunk_index_encoding"]:
                codes = codes + self._encode(position, codes.dtype)

    # --- weight-space outputs -------------------------------------------------------------------

    def build_weight_head(self) -> nn.Module:
        return ElementDecoder(self.hidden, self.chunk_width)

    def weight_values(self, batch: ChunkBatch, records: Sequence[NetworkRecord]) -> list[NetworkRecord]:
        networks, elements = self._network_codes(batch, keep_elements=True)
        chunk_size = batch.element_mask.shape[1]
        elements = elements.reshape(-1, elements.shape[-1])
        chunks_per_network = batch.network_chunk_mask.shape[1]
        decoded = []
        for slots, coordinates in zip(batch.element_slot, batch.tap_coordinates):
            chunk = slots // chunk_size
            network = batch.chunk_network_slot[chunk] // chunks_per_network
            values = self.weight_head(elements[slots], networks[network], coordinates.to(elements.dtype))
            if self.options["standardize_layers"]:
                # Elements came in standardised by their part's std: go back to weight units.
                values = values * batch.part_stats[batch.chunk_part[chunk], 1].exp().to(values.dtype).unsqueeze(1)
            decoded.append(values)
        networks = place_elements(decoded, records)
        # Values came in the encoded form: back to each network's own signs, then its own order.
        if self.options["canonical_signs"]:
            ordered = [_canonical(r) for r in records] if self.options["canonical_order"] else records
            networks = [_out_of_canonical_signs(values, record) for values, record in zip(networks, ordered)]
        if self.options["canonical_order"]:
            networks = [_from_canonical(values, record) for values, record in zip(networks, records)]
        return networks

    def _chunk_codes(
        self, batch: ChunkBatch | ChunkPlan, dtype: torch.dtype, keep_elements: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Codes (N, hidden) of all chunks, encoded run by run; with ``keep_elements`` also the
        element codes before the chunk PMA, (N, c, hidden).

        Runs are ``chunk_micro_batch`` chunks when training with that option (checkpointed: the
        backward pass keeps tap values and chunk codes only), :data:`INFERENCE_CHUNKS` without
        gradients, else the whole batch. A run embeds only its own elements (for a :class:`ChunkPlan`
        they are made then). The pooled codes are batch-normalised once, all runs together, so the
        codes, the gradients and the running statistics are those of one run.
        """
        index = batch.skeleton if isinstance(batch, ChunkPlan) else batch
        step = self.options["chunk_micro_batch"]
        checkpointed = step is not None and torch.is_grad_enabled()
        if step is None:
            step = TRAINING_CHUNKS if torch.is_grad_enabled() else INFERENCE_CHUNKS
        linked = None
        if self.neuron_in is not None:
            linked = self.source_out[-1](self._neuron_codes(batch, dtype, step))
        if self.chunk_links is not None:
            linked = self._chunk_link_codes(batch, index, dtype, step, linked)
        if not (self.training or torch.is_grad_enabled() or keep_elements):
            return self._chunk_codes_streamed(batch, index, dtype, step, linked), None
        codes, elements = [], []
        for first, last, run in self._runs(batch, step):
            args = (run, index, dtype, first, last, keep_elements, linked)
            if checkpointed:
                chunk_codes, element_codes = checkpoint(self._encode_chunk_range, *args, use_reentrant=False)
            else:
                chunk_codes, element_codes = self._encode_chunk_range(*args)
            codes.append(chunk_codes)
            elements.append(element_codes)
        codes = self.chunk_pool.norm(torch.cat(codes))
        if self.chunk_out is not None:
            codes = self.chunk_out(codes)
        return codes, torch.cat(elements) if keep_elements else None

    def _chunk_codes_streamed(self, batch: ChunkBatch | ChunkPlan, index: ChunkBatch, dtype: torch.dtype, step: int,
                              linked: torch.Tensor | None) -> torch.Tensor:
        """:meth:`_chunk_codes` in eval mode without gradients: batch normalisation then applies running
        statistics, element by element, so each run's codes are normalised and projected as they come
        and written into one buffer. A network's chunk codes exist once (a list of runs, their
        concatenation, the normalised copy and its projection held up to four copies)."""
        codes = None
        for first, last, run in self._runs(batch, step):
            chunk_codes = self.chunk_pool.norm(self._encode_chunk_range(run, index, dtype, first, last, False, linked)[0])
            if self.chunk_out is not None:
                chunk_codes = self.chunk_out(chunk_codes)
            if codes is None:
                codes = chunk_codes.new_empty(len(index.chunk_type), chunk_codes.shape[1])
            codes[first:last] = chunk_codes
        return codes

    def _runs(self, batch: ChunkBatch | ChunkPlan, step: int):
        """``(first, last, elements)`` of every run of ``step`` chunks, on the batch's device."""
        index = batch.skeleton if isinstance(batch, ChunkPlan) else batch
        num_chunks = len(index.chunk_type)
        for first in range(0, num_chunks, step):
            last = min(first + step, num_chunks)
            run = batch.elements(first, last)
            yield first, last, batch_to(run, index.chunk_type.device) if isinstance(batch, ChunkPlan) else run

    def _embed(self, run: ChunkElements, dtype: torch.dtype) -> torch.Tensor:
        """Element embeddings of a run, (elements, chunk width), kernel group after kernel group."""
        nothing = [None] * len(run.tap_values)
        extras = zip(run.source_features or nothing, run.input_positions or nothing, run.own_features or nothing,
                     run.probe_features or nothing)
        return torch.cat([
            self.element_embedding(values.to(dtype), coordinates.to(dtype),
                                   *(None if extra is None else extra.to(dtype) for extra in group))
            for values, coordinates, group in zip(run.tap_values, run.tap_coordinates, extras)
        ])

    @staticmethod
    def _with_source_codes(embedded: torch.Tensor, run: ChunkElements, linked: torch.Tensor) -> torch.Tensor:
        """``embedded`` plus, for each element whose source neuron is known, that neuron's row of
        ``linked`` (neurons, chunk width): its code, mapped for the stage that reads it."""
        source = torch.cat(run.source_neuron)
        gathered = linked[source.clamp_min(0)]
        return embedded + torch.where((source >= 0).unsqueeze(1), gathered, torch.zeros((), dtype=gathered.dtype))

    def _neuron_means(self, batch: ChunkBatch | ChunkPlan, dtype: torch.dtype, step: int,
                      element_rows: Callable[[int, int, ChunkElements], torch.Tensor]) -> torch.Tensor:
        """Per neuron, (neurons, chunk width), the mean over its elements (incoming weights and bias) of
        ``element_rows(first, last, run)``, one row per element of each run; run by run, so only one
        run's elements and the sums of all neurons exist at a time."""
        index = batch.skeleton if isinstance(batch, ChunkPlan) else batch
        total = torch.zeros(index.neuron_count, self.chunk_width, dtype=dtype, device=index.chunk_type.device)
        members = torch.zeros(index.neuron_count, dtype=dtype, device=index.chunk_type.device)
        for first, last, run in self._runs(batch, step):
            rows = element_rows(first, last, run)
            own = torch.cat(run.own_neuron)
            mine = own >= 0
            total = total.index_add(0, own[mine], rows[mine])
            members = members.index_add(0, own[mine], torch.ones_like(own[mine], dtype=dtype))
        return total / members.clamp_min(1).unsqueeze(1)

    def _chunk_link_codes(self, batch: ChunkBatch | ChunkPlan, index: ChunkBatch, dtype: torch.dtype, step: int,
                          linked: torch.Tensor | None) -> torch.Tensor:
        """What the last pass links (``chunk_link_passes``), (neurons, chunk width): per pass, every
        chunk encoded with the links so far, each neuron's code the mean of its elements' codes after
        the set-to-set stages, mapped by that pass's link."""
        for link in self.chunk_links:
            def element_codes(first: int, last: int, run: ChunkElements, linked=linked) -> torch.Tensor:
                coded = self._encode_chunk_range(run, index, dtype, first, last, True, linked)[1]
                return coded.reshape(-1, coded.shape[-1])[torch.cat(run.element_slot)]

            linked = link(self._neuron_means(batch, dtype, step, element_codes))
        return linked

    def _neuron_codes(self, batch: ChunkBatch | ChunkPlan, dtype: torch.dtype, step: int) -> torch.Tensor:
        """The last round's neuron codes, (neurons, chunk width) (``source_code_rounds``)."""
        neurons = None
        for round_, neuron_in in enumerate(self.neuron_in):
            linked = None if neurons is None else self.source_out[round_ - 1](neurons)

            def embedded(first: int, last: int, run: ChunkElements, linked=linked) -> torch.Tensor:
                rows = self._embed(run, dtype)
                return rows if linked is None else self._with_source_codes(rows, run, linked)

            neurons = torch.relu(neuron_in(self._neuron_means(batch, dtype, step, embedded)))
        return neurons

    def _encode_chunk_range(
        self, run: ChunkElements, batch: ChunkBatch, dtype: torch.dtype, first: int, last: int,
        keep_elements: bool = False, linked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed the elements ``run`` of chunks ``first:last`` (with their source neurons' mapped codes
        ``linked``, if given) and run the chunk encoder on them: pooled chunk codes before their
        batch normalisation, and with ``keep_elements`` the element codes before the chunk PMA."""
        chunk_size = run.element_mask.shape[1]
        embedded = self._embed(run, dtype)
        if linked is not None:
            embedded = self._with_source_codes(embedded, run, linked)
        mask = run.element_mask
        elements = _gather_sets(embedded, torch.cat(run.element_slot), mask)
        if self.options["use_row_slot_encoding"]:
            row_codes = self._encode(torch.arange(chunk_size, device=mask.device), dtype, self.chunk_width)
            elements = elements + row_codes[run.row_slot]
        x = self.chunk_stack_1(elements, mask) + self._chunk_context(batch, dtype, first, last).unsqueeze(1)
        x = self.chunk_stack_2(x, mask)
        return self.chunk_pool.pool(x, mask), x if keep_elements else None

    def _chunk_context(self, batch: ChunkBatch, dtype: torch.dtype, first: int, last: int) -> torch.Tensor:
        """Layer-type plus layer-level encoding of chunks ``first:last``, (last - first, hidden)."""
        kinds, levels = batch.chunk_type[first:last], self._levels(batch, first, last)[0]
        width = self.chunk_width
        context = torch.zeros(last - first, width, dtype=dtype, device=kinds.device)
        if self.options["use_type_encoding"]:
            context = context + self._encode(type_positions(kinds), dtype, width)
        if self.options["use_level_encoding"]:
            # Levels sit after the first release's type positions on the same sinusoidal axis, new
            # types before 0 (chunking.type_positions): were both counted from 0, (type a, level b)
            # and (type b, level a) would add up to the same context.
            context = context + self._encode(levels + LEVEL_POSITION_OFFSET, dtype, width)
        if self.activation_codes is not None:
            context = context + self.activation_codes[batch.chunk_activation[first:last]].to(dtype)
        if self.part_scale is not None:
            context = context + self.part_scale(self._normalized_part_stats(batch, first, last))
        if self.part_shape is not None:
            context = context + self.part_shape(batch.part_shape[batch.chunk_part[first:last]] / SHAPE_LOG_SCALE)
        return context


def place_elements(decoded: list[torch.Tensor], records: Sequence[NetworkRecord]) -> list[NetworkRecord]:
    """Decoded values per kernel-shape group, ``(elements, taps)`` in the group's element order, back
    at their parameters' places: ``records`` with the values as their weights and biases.

    :func:`~sne.encoders.chunking.pad_chunk` walks networks, layers and parts (weight, then bias)
    in record order and appends each part's elements, row-major over (out, in), to the group of
    its kernel shape (groups numbered by first appearance; a bias is a one-tap element like a
    linear weight). The same walk here finds every part's range in its group.
    """
    groups: dict[tuple[int, ...], int] = {}
    used: list[int] = []

    def take(kernel: tuple[int, ...], count: int) -> torch.Tensor:
        group = groups.setdefault(kernel, len(groups))
        if group == len(used):
            used.append(0)
        start, used[group] = used[group], used[group] + count
        return decoded[group][start : start + count]

    networks = []
    for record in records:
        layers = []
        for _, shape, has_bias in record.architecture:
            weight = take(tuple(shape[2:]), shape[0] * shape[1]).reshape(shape)
            bias = take((), shape[0]).reshape(shape[0]) if has_bias else None
            layers.append((weight, bias))
        networks.append(with_parameter_values(record, layers))
    if used != [len(values) for values in decoded]:
        raise RuntimeError("SNE weight outputs: the chunk layout does not match the records given")
    return networks


def _canonical_order(record: NetworkRecord) -> list[torch.Tensor | None] | None:
    """The permutations that put ``record`` in canonical neuron order, ``None`` if it is not a
    plain chain (no canonical order is defined for it: it is encoded as it is)."""
    try:
        return canonical_permutations(record)
    except SneError:
        return None


def _canonical(record: NetworkRecord) -> NetworkRecord:
    """``record`` in canonical neuron order if it is a plain chain, else as it is."""
    order = _canonical_order(record)
    return record if order is None else permute_hidden(record, order)


def _from_canonical(values: NetworkRecord, record: NetworkRecord) -> NetworkRecord:
    """``values``, laid out like ``_canonical(record)``, in ``record``'s own neuron order."""
    order = _canonical_order(record)
    if order is None:
        return values
    return permute_hidden(values, [None if perm is None else torch.argsort(perm) for perm in order])


def _out_of_canonical_signs(values: NetworkRecord, record: NetworkRecord) -> NetworkRecord:
    """``values``, laid out in the canonical signs of ``record``, in ``record``'s own signs (flips are
    their own inverse). Records without flippable neurons are returned as they are."""
    return flip_signs(values, canonical_signs(record)) if supports_sign_flips(record) else values


def chunk_heads_for(options: dict[str, Any]) -> int:
    """Attention heads of the chunk stage: ``heads`` at the paper's width, else as many as keep the
    other stages' head width."""
    chunk = options["chunk_hidden"] or options["hidden"]
    return max(1, chunk * options["heads"] // options["hidden"])


def _validate(options: dict[str, Any]) -> None:
    def positive_int(name: str) -> None:
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SneError(f"SNE option {name} must be a positive integer, got {value!r}")

    for name in ("chunk_size", "hidden", "heads", "out_dim", "pool_seeds"):
        positive_int(name)
    for name in ("num_sab", "source_code_rounds", "chunk_link_passes", "chunk_sab", "probe_points"):
        if name == "chunk_sab" and options[name] is None:
            continue
        if isinstance(options[name], bool) or not isinstance(options[name], int) or options[name] < 0:
            raise SneError(f"SNE option {name} must be a non-negative integer, got {options[name]!r}")
    if options["hidden"] % options["heads"]:
        raise SneError(f"SNE option hidden ({options['hidden']}) must be divisible by heads ({options['heads']})")
    for name in ("chunk_micro_batch", "part_window", "chunk_hidden"):
        if options[name] is not None:
            positive_int(name)
    if options["part_window"] == 1:  # windows of one chunk never make a part's set smaller: no level above
        raise SneError("SNE option part_window must be at least 2 (chunks pooled per window), or null for one set per part")
    if options["level_origin"] not in LEVEL_ORIGINS:
        raise SneError(f"SNE option level_origin must be one of {', '.join(LEVEL_ORIGINS)}, got {options['level_origin']!r}")
    if options["chunk_hidden"] is not None and options["chunk_hidden"] % chunk_heads_for(options):
        raise SneError(f"SNE option chunk_hidden ({options['chunk_hidden']}) must be divisible by its heads "
                       f"({chunk_heads_for(options)}: heads x chunk_hidden / hidden)")
    for name, value in options.items():
        if (name in ("standardize_layers", "batch_norm", "canonical_order", "canonical_signs", "preserve_chunk_scale",
                     "pool_statistics", "qk_norm")
                or name.startswith("use_")) and not isinstance(
            value, bool
        ):
            raise SneError(f"SNE option {name} must be true or false, got {value!r}")
    try:
        norm_placement(options["layer_norm"])
    except ValueError as error:
        raise SneError(f"SNE option {error}") from None
    for name in ("use_neuron_gains", "use_neuron_means", "use_neuron_phases"):
        if options[name] and not (options["use_source_features"] or options["use_own_neuron_features"]):
            raise SneError(f"SNE option {name} adds to the neuron features: it needs use_source_features "
                           "or use_own_neuron_features")
