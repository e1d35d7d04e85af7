"""Fixed sinusoidal encodings of integer positions and of continuous coordinates.

:func:`sinusoidal_encoding` is the encoding of Vaswani et al. (2017) for integer positions
(layer level, layer type, chunk index, row slot). :func:`coordinate_encoding` encodes a
coordinate in ``[-1, 1]`` (a kernel tap's place in its kernel) with octave frequencies, so that
kernels of any size map to the same feature space.
"""

from __future__ import annotations

import math

import torch


def sinusoidal_encoding(
    positions: torch.Tensor, dim: int, *, dtype: torch.dtype | None = None, max_period: float = 10_000.0
) -> torch.Tensor:
    """Encode ``positions`` (any shape) as ``(*positions.shape, dim)``.

    Feature ``i < dim // 2`` is ``sin(p / max_period ** (2i / dim))``, feature ``dim // 2 + i`` the
    matching cosine; an odd ``dim`` leaves the last feature zero.
    """
    dtype = dtype or torch.get_default_dtype()
    half = dim // 2
    exponents = torch.arange(half, device=positions.device, dtype=dtype) * (2.0 / dim)
    frequencies = torch.exp(-math.log(max_period) * exponents)
    angles = positions.to(dtype).unsqueeze(-1) * frequencies
    encoding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        encoding = torch.nn.functional.pad(encoding, (0, 1))
    return encoding


def coordinate_encoding(coordinates: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """Encode coordinates in ``[-1, 1]`` (any shape) as ``(*coordinates.shape, 2 * num_frequencies)``.

    Frequencies are ``pi / 2 * 2**k`` for ``k < num_frequencies``: the lowest is monotone over
    ``[-1, 1]``, so every coordinate gets a distinct code whatever the kernel size; higher ones
    separate neighbouring taps of large kernels.
    """
    frequencies = (math.pi / 2) * 2.0 ** torch.arange(
        num_frequencies, device=coordinates.device, dtype=coordinates.dtype
    )
    angles = coordinates.unsqueeze(-1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
