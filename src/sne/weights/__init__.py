"""Weight-space records of networks: build them from modules and files, permute them, stack them."""

from sne.weights.batch import StackedWeights, with_parameter_values
from sne.weights.io import (
    load_record,
    load_state_dict_file,
    record_from_state_dict,
    save_state_dict_file,
)
from sne.weights.trace import record_from_module
from sne.weights.permute import (
    canonical_permutations,
    canonicalize_hidden,
    permute_hidden,
    random_equivalent_permutation,
    random_permutations,
    shuffle_incoming,
    supports_permutation,
)
from sne.weights.record import LAYER_KINDS, Layer, NetworkRecord, make_layer

__all__ = [
    "LAYER_KINDS",
    "Layer",
    "NetworkRecord",
    "StackedWeights",
    "canonical_permutations",
    "canonicalize_hidden",
    "load_record",
    "load_state_dict_file",
    "make_layer",
    "permute_hidden",
    "random_equivalent_permutation",
    "random_permutations",
    "record_from_module",
    "record_from_state_dict",
    "save_state_dict_file",
    "shuffle_incoming",
    "supports_permutation",
    "with_parameter_values",
]
