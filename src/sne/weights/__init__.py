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
    canonical_signs,
    canonicalize_hidden,
    canonicalize_signs,
    flip_signs,
    permute_hidden,
    random_equivalent_permutation,
    random_permutations,
    random_sign_flips,
    sign_alignment,
    shuffle_incoming,
    sign_flip_groups,
    supports_permutation,
    supports_sign_flips,
)
from sne.weights.record import LAYER_KINDS, Layer, NetworkRecord, make_layer

__all__ = [
    "LAYER_KINDS",
    "Layer",
    "NetworkRecord",
    "StackedWeights",
    "canonical_permutations",
    "canonical_signs",
    "canonicalize_hidden",
    "canonicalize_signs",
    "flip_signs",
    "load_record",
    "load_state_dict_file",
    "make_layer",
    "permute_hidden",
    "random_equivalent_permutation",
    "random_permutations",
    "random_sign_flips",
    "sign_alignment",
    "record_from_module",
    "record_from_state_dict",
    "save_state_dict_file",
    "shuffle_incoming",
    "sign_flip_groups",
    "supports_permutation",
    "supports_sign_flips",
    "with_parameter_values",
]
