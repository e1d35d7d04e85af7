"""Build weight-space records from state_dicts, modules and checkpoint files; save state_dicts."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file as _save_safetensors
from torch import nn

from sne.errors import SneError, one_line
from sne.io_utils import atomic_path
from sne.weights.record import Layer, NetworkRecord, check_tensors, make_layer
from sne.weights.trace import record_from_module

# Buffers that mark a normalisation layer (BatchNorm and friends) in a state_dict.
_NORM_BUFFERS = {"running_mean", "running_var", "num_batches_tracked"}

# safetensors stores keys sorted, so the layer order is kept in the file's metadata under this key.
_KEY_ORDER = "sne.key_order"

# The entries of a training checkpoint that may hold the model's state_dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict")


def record_from_state_dict(
    state: Mapping[str, torch.Tensor],
    source: str = "<state_dict>",
    activations: Sequence[str | None] | None = None,
) -> NetworkRecord:
    """Read a bare state_dict, where its structure is unambiguous: a chain of linear and convolution
    layers (``<prefix>.weight`` / ``<prefix>.bias``, in order of first appearance) with batch norms
    (``running_mean``/``running_var``) between them, each layer taking the previous one's outputs
    (a linear layer may take a flattened feature map). Anything else (an embedding, a grouped or
    depthwise convolution, attention, a free parameter) cannot be told from names and shapes alone:
    :class:`SneError` names the key and asks for the architecture. Activations are unknown (``None``)
    unless ``activations`` gives one per layer. The record shares the given tensors.
    """
    groups: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise SneError(f"{source}: state_dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise SneError(f"{source}: entry '{key}' is a {type(value).__name__}, not a tensor")
        prefix, dot, suffix = key.rpartition(".")
        if not dot:
            raise SneError(f"{source}: cannot tell what '{key}' is without the architecture "
                           f"(a free parameter?); pass --arch FILE.py:FACTORY")
        groups.setdefault(prefix, {})[suffix] = value

    if activations is not None and len(activations) != len(groups):
        raise SneError(f"{source}: {len(activations)} activations given for {len(groups)} layers")

    layers: list[Layer] = []
    for level, (name, parts) in enumerate(groups.items()):
        activation = None if activations is None else activations[level]
        if _NORM_BUFFERS.intersection(parts):
            layer = _batch_norm(name, level, parts, activation, source)
        else:
            _check_layer_entries(name, parts, source)
            layer = make_layer(name, level, parts["weight"], parts.get("bias"), activation, source=source)
        if layers:
            _check_follows(layers[-1], layer, source)
        layers.append(layer)
    return NetworkRecord(tuple(layers), source=source)


def _check_layer_entries(name: str, parts: dict[str, torch.Tensor], source: str) -> None:
    """Refuse groups that are not a linear or convolutional layer, naming the offending key."""
    extra = [suffix for suffix in parts if suffix not in ("weight", "bias")]
    if extra:
        raise SneError(
            f"{source}: unknown layer type for '{name}': unexpected key '{name}.{extra[0]}' "
            f"(expected only '{name}.weight' and '{name}.bias'); pass --arch FILE.py:FACTORY"
        )
    if "weight" not in parts:
        raise SneError(f"{source}: '{name}.bias' has no matching '{name}.weight'")
    weight = parts["weight"]
    if weight.dim() == 1:
        raise SneError(
            f"{source}: unknown layer type for '{name}' (a normalisation? 1-D weight of shape "
            f"{tuple(weight.shape)} without running statistics); pass --arch FILE.py:FACTORY"
        )


def _batch_norm(name: str, level: int, parts: dict[str, torch.Tensor], activation, source: str) -> Layer:
    """A batch norm read from its state_dict entries (running statistics mark it unambiguously)."""
    allowed = {"weight", "bias", *_NORM_BUFFERS}
    extra = sorted(set(parts) - allowed)
    if extra or not {"running_mean", "running_var"} <= set(parts):
        key = f"{name}.{extra[0]}" if extra else f"{name}.running_var"
        raise SneError(f"{source}: unknown layer type for '{name}' (unexpected or missing '{key}'); "
                       f"pass --arch FILE.py:FACTORY")
    channels = parts["running_mean"].shape
    for local, tensor in parts.items():
        if local != "num_batches_tracked" and (tensor.dim() != 1 or tensor.shape != channels):
            raise SneError(f"{source}: batch norm '{name}' has '{name}.{local}' of shape {tuple(tensor.shape)}, "
                           f"expected {tuple(channels)}")
    order = [k for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked") if k in parts]
    tensors = check_tensors(name, {k: parts[k] for k in order}, source)
    return Layer(name, "batch_norm", level, tensors, activation)


def _check_follows(previous: Layer, layer: Layer, source: str) -> None:
    """Refuse a layer whose inputs are not the previous layer's outputs: the file alone cannot say
    what it is (a grouped or depthwise convolution, an embedding, a branch)."""
    channels, inputs = previous.out_features, layer.in_features
    if inputs == channels:
        return
    if layer.kind == "linear" and previous.kind not in ("linear", "batch_norm") and inputs % channels == 0:
        return  # a flattened feature map
    if layer.kind == "linear" and previous.kind == "batch_norm" and inputs % channels == 0:
        return
    guess = ("a grouped or depthwise convolution" if layer.kind.startswith("conv") else
             "an embedding, or a layer on another branch")
    raise SneError(
        f"{source}: ambiguous without the architecture: '{layer.key(layer.weight_name)}' of shape "
        f"{tuple(layer.weight.shape)} takes {inputs} inputs after '{previous.name}' with {channels} outputs "
        f"({guess}?); pass --arch FILE.py:FACTORY"
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors``, or from a PyTorch file (.pt/.pth/.bin/.ckpt) unpickled safely.

    A training checkpoint whose ``state_dict`` or ``model_state_dict`` entry holds the state_dict is
    accepted too. Raises :class:`SneError` naming the file for anything else. A safetensors file
    keeps the order :func:`save_state_dict_file` recorded, or else the order of its own header.
    """
    path = Path(path)
    if not path.is_file():
        raise SneError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size == 0:
        raise SneError(f"{path}: empty file")
    if path.suffix == ".safetensors":
        try:
            return _read_safetensors(path)
        except Exception as exc:  # SafetensorError, and OSError/TypeError for unreadable or exotic content
            raise SneError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the outcome is reported below.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            raise SneError(
                f"{path}: not a plain state_dict (refused to unpickle {refused.group(1)}; "
                f"save model.state_dict() instead of objects or whole modules)"
            ) from None
        raise SneError(f"{path}: not a PyTorch checkpoint, or it is corrupt ({_unpickler_reason(exc)})") from None
    except Exception as exc:  # torch.load raises many types (RuntimeError, EOFError, ...) for a bad file
        raise SneError(f"{path}: not a PyTorch checkpoint, or it is corrupt ({one_line(exc)})") from None
    return _as_state_dict(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    keys = _safetensors_header_keys(path)
    with safe_open(path, framework="pt", device="cpu") as file:
        try:
            order = json.loads((file.metadata() or {}).get(_KEY_ORDER, "null"))
        except json.JSONDecodeError:
            order = None
        if not (isinstance(order, list) and all(isinstance(k, str) for k in order) and sorted(order) == sorted(keys)):
            order = keys
        return {key: file.get_tensor(key) for key in order}


def _safetensors_header_keys(path: Path) -> list[str]:
    """Tensor names in the order of the file's own header (``safe_open`` would sort them)."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise ValueError(f"header of {length} bytes claimed in a file of {size} bytes")
        header = json.loads(file.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return [key for key in header if key != "__metadata__"]


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise SneError(f"{path}: holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
    nested = [key for key in _NESTED_STATE_KEYS if isinstance(obj.get(key), Mapping)]
    if len(nested) > 1:
        raise SneError(f"{path}: ambiguous checkpoint with both 'state_dict' and 'model_state_dict' entries")
    if nested:
        obj = obj[nested[0]]
    for key, value in obj.items():
        if not isinstance(key, str):
            raise SneError(f"{path}: key {key!r} is not a string (expected a state_dict)")
        if not isinstance(value, torch.Tensor):
            raise SneError(
                f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor (expected a state_dict, "
                f"or a checkpoint with a 'state_dict' or 'model_state_dict' entry)"
            )
    return dict(obj)


def _unpickler_reason(exc: Exception) -> str:
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
    return match.group(1).strip() if match else type(exc).__name__


def load_record(path: str | os.PathLike, arch: "Arch | None" = None) -> NetworkRecord:
    """The record of the state_dict in ``path``; its source is the path as given. With ``arch`` (see
    :class:`sne.weights.arch.Arch`) any architecture is read; without it, only a bare state_dict whose
    structure is unambiguous (:func:`record_from_state_dict`)."""
    state = load_state_dict_file(path)
    if arch is None:
        return record_from_state_dict(state, source=str(path))
    return arch.record(state, source=str(path))


def save_state_dict_file(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` atomically: safetensors for a ``.safetensors`` suffix, ``torch.save`` otherwise."""
    path = Path(path)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise SneError(f"{path}: cannot save entry {key!r} of type {type(value).__name__} (tensors only)")
    # Contiguous clones: safetensors refuses views and tensors that share storage.
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            _save_safetensors(tensors, tmp, metadata={_KEY_ORDER: json.dumps(list(tensors))})
        else:
            torch.save(tensors, tmp)
