"""Encoders: one interface, one registry. Importing this package registers every built-in encoder."""

from sne.encoders.base import (
    Encoder,
    batch_to,
    build_encoder,
    build_encoder_from_config,
    encoder_names,
    get_encoder_class,
    register_encoder,
)
from sne.encoders import sne as _sne  # noqa: F401  (registers "sne")

__all__ = [
    "Encoder",
    "batch_to",
    "build_encoder",
    "build_encoder_from_config",
    "encoder_names",
    "get_encoder_class",
    "register_encoder",
]
