"""Neural functionals NFN-NP and NFN-HNP (Zhou et al. 2023a), built from the ``nfn`` package's layers.

    weights, biases  -> per-layer standardisation (fitted on the training split)
                     -> [NPLinear | HNPLinear  -> ReLU] x num_layers      (equivariant)
                     -> NPPool | HNPPool -> flatten -> BatchNorm -> Linear (invariant) -> z

NP layers treat every neuron, input and output neurons included, as permutable; HNP layers only
the hidden neurons (input and output neurons keep their identity). Both need one fixed chain of
linear and conv2d layers whose neurons line up one to one (conv layers, global pooling, linear
layers): the package's layers are built for a given network spec. The layers, pooling and spec
come from the package; this module wraps them behind the :class:`~sne.encoders.base.Encoder`
interface. Not included: the package's optional Fourier-feature input encoding.

Weight-space outputs (:meth:`~sne.encoders.base.Encoder.make_weight_head`): the equivariant layers
map weight space to weight space, so instead of pooling, one more equivariant layer (NPLinear or
HNPLinear, zero-initialised) maps their features to one channel: one value per parameter, scaled
by the layer's fitted standard deviation (undoing the input standardisation) into weight units.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp
from torch import nn

from sne.encoders.base import Architecture, Encoder, register_encoder
from sne.encoders.common import (
    LayerScaler,
    check_chain_records,
    check_neuron_chain,
    check_positive_int,
    require_architecture,
    resolve_options,
)
from sne.errors import CannotRead, SneError
from sne.weights.batch import StackedWeights
from sne.weights.record import NetworkRecord

#: Layer kinds the nfn package's layers take (its conv support is 2-D kernels only).
NFN_KINDS = ("linear", "conv2d")

DEFAULT_OPTIONS: dict[str, Any] = {"hidden": 32, "num_layers": 3, "out_dim": 32, "batch_norm": True}


def network_spec(architecture: Architecture):
    """The ``nfn`` package's network spec for ``architecture`` (which axes are permutable)."""
    weights = [torch.zeros(1, 1, *shape) for _, shape, _ in architecture]
    biases = [torch.zeros(1, 1, shape[0]) for _, shape, _ in architecture]
    return network_spec_from_wsfeat(WeightSpaceFeatures(weights, biases))


def to_wsfeat(batch: StackedWeights) -> WeightSpaceFeatures:
    """Stacked weights as the package's features, with one channel: (batch, 1, *shape); the one
    conversion in, at the start of the package's layers."""
    return WeightSpaceFeatures([w.unsqueeze(1) for w in batch.weights], [b.unsqueeze(1) for b in batch.biases])


def from_wsfeat(features: WeightSpaceFeatures, has_bias: tuple[bool, ...]) -> StackedWeights:
    """The package's features of one channel as stacked weights (layers with a bias per ``has_bias``):
    the inverse of :func:`to_wsfeat`, the one conversion out."""
    return StackedWeights(tuple(w.squeeze(1) for w in features.weights), tuple(b.squeeze(1) for b in features.biases),
                          tuple(has_bias))


def zero_parameters(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to 0 (a linear output layer then outputs 0); return it."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class WeightSpaceEncoder(Encoder):
    """Shared frame of the fixed-architecture weight-space encoders: options, architecture checks,
    per-layer input standardisation, stacking records layer by layer.

    Subclasses set ``kinds`` (the layer kinds they take) and ``min_layers``, and build their network
    in ``build(architecture, options)``, ending in :meth:`readout_layer`; ``forward`` passes the
    standardised :class:`~sne.weights.StackedWeights` to their ``encode``.

    Option ``batch_norm`` (an addition to the papers' architectures, on by default): batch-normalise
    the pooled invariant features before the readout. Networks of a zoo share most of their weight
    statistics, so pooled features differ between networks by a small fraction of their size (a few
    percent on shared-init sine INRs) and training barely moves the loss; SNE has the same remedy for
    the same reason (:class:`sne.encoders.sne.SetPool`). It acts after pooling, so codes stay
    exactly invariant; in training mode they depend on the rest of the batch, in eval mode not.
    """

    defaults: ClassVar[dict[str, Any]] = {}
    kinds: ClassVar[tuple[str, ...]] = NFN_KINDS
    min_layers: ClassVar[int] = 1
    weight_outputs = True

    def __init__(self, *, architecture: Architecture | None = None, **options: Any) -> None:
        resolved = resolve_options(self.name, self.defaults, options)
        for key in ("hidden", "num_layers", "out_dim"):
            check_positive_int(self.name, key, resolved[key])
        if not isinstance(resolved["batch_norm"], bool):
            raise SneError(f"{self.name} option batch_norm must be true or false, got {resolved['batch_norm']!r}")
        architecture = require_architecture(self.name, architecture)
        check_neuron_chain(self.name, architecture, self.kinds)
        if len(architecture) < self.min_layers:
            raise CannotRead(f"encoder '{self.name}' needs networks of at least {self.min_layers} layers, "
                           f"got {len(architecture)}")
        super().__init__(architecture=architecture, **resolved)
        self.out_dim = resolved["out_dim"]
        self.scaler = LayerScaler(len(architecture))
        self.build(architecture, resolved)

    def build(self, architecture: Architecture, options: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def readout_layer(self, in_features: int) -> nn.Sequential:
        """Pooled invariant features -> z: (batch norm, see the class docstring, then) a Linear."""
        norm = nn.BatchNorm1d(in_features) if self.options["batch_norm"] else nn.Identity()
        return nn.Sequential(norm, nn.Linear(in_features, self.out_dim))

    def check_records(self, records: Sequence[NetworkRecord]) -> None:
        check_chain_records(self.name, self.architecture, records)

    def fit_input_statistics(self, records: Sequence[NetworkRecord]) -> None:
        self.check_records(records)
        self.scaler.fit(StackedWeights.from_records(records, torch.float64))

    def prepare(self, records: Sequence[NetworkRecord]) -> StackedWeights:
        self.check_records(records)
        return StackedWeights.from_records(records, self.scaler.weight_mean.dtype)

    def forward(self, batch: StackedWeights) -> torch.Tensor:
        return self.encode(self.scaler(batch))

    def encode(self, batch: StackedWeights) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def weight_values(
        self, batch: StackedWeights, records: Sequence[NetworkRecord]
    ) -> list[NetworkRecord]:
        outputs = self.equivariant_outputs(self.scaler(batch))
        # Back from standardised units to weight units: a change scales by the std; the mean only shifts.
        weights = tuple(w * self.scaler.weight_std[i].to(w.dtype) for i, w in enumerate(outputs.weights))
        biases = tuple(b * self.scaler.bias_std[i].to(b.dtype) for i, b in enumerate(outputs.biases))
        return StackedWeights(weights, biases, outputs.has_bias).to_records(records)

    def equivariant_outputs(self, batch: StackedWeights) -> StackedWeights:  # pragma: no cover - interface
        """One value per parameter (``weight_head`` last), from standardised inputs, in standardised units."""
        raise NotImplementedError


class _NFNEncoder(WeightSpaceEncoder):
    """NFN with ``num_layers`` equivariant layers of ``hidden`` channels, pooled, then Linear to z.

    Options: ``hidden`` channels per equivariant layer; ``num_layers`` equivariant layers;
    ``out_dim`` size of z; ``batch_norm`` (see :class:`WeightSpaceEncoder`).
    """

    defaults = DEFAULT_OPTIONS
    layer_class: ClassVar[type[nn.Module]]
    pool_class: ClassVar[type[nn.Module]]

    def build(self, architecture: Architecture, options: dict[str, Any]) -> None:
        spec = network_spec(architecture)
        channels = [1] + [options["hidden"]] * options["num_layers"]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [self.layer_class(spec, c_in, c_out), TupleOp(nn.ReLU())]
        self.equivariant = nn.Sequential(*layers)
        self.pool = self.pool_class(spec)
        self.readout = self.readout_layer(channels[-1] * self.pool_class.get_num_outs(spec))

    def encode(self, batch: StackedWeights) -> torch.Tensor:
        pooled = self.pool(self.equivariant(to_wsfeat(batch)))
        return self.readout(pooled.flatten(1))

    def build_weight_head(self) -> nn.Module:
        return zero_parameters(self.layer_class(network_spec(self.architecture), self.options["hidden"], 1))

    def equivariant_outputs(self, batch: StackedWeights) -> StackedWeights:
        return from_wsfeat(self.weight_head(self.equivariant(to_wsfeat(batch))), batch.has_bias)


@register_encoder("nfn_np")
class NFNNPEncoder(_NFNEncoder):
    """NFN-NP: equivariant to permutations of every neuron (``nfn.layers.NPLinear``, ``NPPool``)."""

    layer_class = NPLinear
    pool_class = NPPool


@register_encoder("nfn_hnp")
class NFNHNPEncoder(_NFNEncoder):
    """NFN-HNP: equivariant to permutations of hidden neurons only (``HNPLinear``, ``HNPPool``)."""

    layer_class = HNPLinear
    pool_class = HNPPool
    #: HNPLinear treats the first and last layer specially and needs both.
    min_layers = 2
