"""Zoo recipes: how the networks of a zoo are made, registered by name.

A recipe resolves its options (filling defaults, rejecting bad values), describes the architecture,
targets and data of the zoo it makes, and trains the networks of one shard at a time. The zoo
format (:mod:`sne.zoo.format`) does everything else: splits, files, resume, progress.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from sne.errors import SneError


@dataclass(frozen=True)
class Shard:
    """The trained networks of one shard.

    ``tensors`` maps ``<layer>.weight`` / ``<layer>.bias`` to float32 CPU tensors stacked over the
    shard's networks (first dimension); ``rows`` holds one dict per network, in the same order, with
    its ``id``, hyper-parameters, target values and fit metrics.
    """

    tensors: dict[str, torch.Tensor]
    rows: list[dict[str, Any]]


class FitProgress:
    """Receives a recipe's progress; this base class ignores it."""

    def group_started(self, networks: int, steps: int) -> None:
        """A group of ``networks`` trained together starts ``steps`` optimisation steps."""

    def step_done(self) -> None:
        """One optimisation step of the current group is done."""

    def group_done(self, networks: int) -> None:
        """The current group of ``networks`` is trained."""


class RowsToUnits(FitProgress):
    """Passes on ``inner`` progress counted in rows as progress in units of ``rows_per_unit`` rows (the
    images of a zoo of several INRs per image, whose bar counts images), carrying remainders over."""

    def __init__(self, inner: FitProgress, rows_per_unit: int) -> None:
        self.inner, self.rows_per_unit = inner, rows_per_unit
        self.rows = self.units = 0

    def group_started(self, networks: int, steps: int) -> None:
        self.inner.group_started(networks, steps)

    def step_done(self) -> None:
        self.inner.step_done()

    def group_done(self, networks: int) -> None:
        self.rows += networks
        units = self.rows // self.rows_per_unit - self.units
        self.units += units
        self.inner.group_done(units)


class Recipe(ABC):
    """One way of making a zoo. Subclasses register themselves with :func:`register_recipe`.

    Everything random must derive from the zoo seed and the network id (see :func:`derive_seed`),
    so that a shard generated again after an interruption is identical to the lost one.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    @abstractmethod
    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """All options with defaults filled in, as JSON values; :class:`SneError` for bad ones."""

    @abstractmethod
    def architecture(self, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Layers in computation order: ``name``, ``kind``, ``level``, ``weight_shape``,
        ``has_bias``, ``activation`` (plus any recipe-specific detail)."""

    @abstractmethod
    def targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Target columns and their specs, e.g. ``{"frequency": {"kind": "regression"}}``."""

    @abstractmethod
    def dataset(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON description of the data the networks were trained on."""

    def default_shard_size(self, options: Mapping[str, Any]) -> int:
        """Networks per shard file when the caller does not choose."""
        return 1000

    @abstractmethod
    def generate_shard(
        self, ids: np.ndarray, seed: int, options: Mapping[str, Any], progress: FitProgress
    ) -> Shard:
        """Train the networks ``ids`` (ascending) of the zoo with ``seed``."""


_REGISTRY: dict[str, Recipe] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"recipe class {cls.__name__} has no name")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"recipe name '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def recipe_names() -> list[str]:
    return sorted(_REGISTRY)


def get_recipe(name: str) -> Recipe:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SneError(f"unknown zoo recipe '{name}' (available: {', '.join(recipe_names())})") from None


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit seed determined by ``seed``, a stream name and integer keys (e.g. a network id).

    Different streams and keys give statistically independent seeds, so each network's randomness
    depends only on what identifies it, not on which other networks were generated with it.
    """
    entropy = [int(seed), zlib.crc32(stream.encode()), *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def check_options(recipe: str, options: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    """Raise :class:`SneError` for option names ``recipe`` does not know."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SneError(
            f"recipe '{recipe}' has no option {', '.join(repr(u) for u in unknown)} "
            f"(its options: {', '.join(sorted(known))})"
        )
