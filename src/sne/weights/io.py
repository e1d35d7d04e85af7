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
from sne.weights.record import Layer, NetworkRecord, make_layer

#: Modules that become layers of a record.
LAYER_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Activation modules and the names records use for them (``Sine`` is matched by class name).
ACTIVATION_NAMES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
}

# Parameter-free modules that may sit between a layer and its activation without hiding it.
_PASS_THROUGH = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)

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
    """Group ``<prefix>.weight`` / ``<prefix>.bias`` entries, in order of first appearance, into layers.

    The layer name is the prefix and its level the group's position. Activations are unknown
    (``None``) unless ``activations`` gives one per layer. The record shares the given tensors.
    """
    groups: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise SneError(f"{source}: state_dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise SneError(f"{source}: entry '{key}' is a {type(value).__name__}, not a tensor")
        prefix, dot, suffix = key.rpartition(".")
        if not dot:
            raise SneError(f"{source}: key '{key}' has no layer name (expected '<layer>.weight' or '<layer>.bias')")
        groups.setdefault(prefix, {})[suffix] = value

    if activations is not None and len(activations) != len(groups):
        raise SneError(f"{source}: {len(activations)} activations given for {len(groups)} layers")

    layers = []
    for level, (name, parts) in enumerate(groups.items()):
        _check_layer_entries(name, parts, source)
        activation = None if activations is None else activations[level]
        layers.append(make_layer(name, level, parts["weight"], parts.get("bias"), activation, source=source))
    return NetworkRecord(tuple(layers), source=source)


def _check_layer_entries(name: str, parts: dict[str, torch.Tensor], source: str) -> None:
    """Refuse groups that are not a linear or convolutional layer, naming the offending key."""
    extra = [suffix for suffix in parts if suffix not in ("weight", "bias")]
    if extra:
        if _NORM_BUFFERS.intersection(extra):
            raise SneError(
                f"{source}: unknown layer type for '{name}' (BatchNorm-like: has buffer '{name}.{extra[0]}')"
            )
        raise SneError(
            f"{source}: unknown layer type for '{name}': unexpected key '{name}.{extra[0]}' "
            f"(expected only '{name}.weight' and '{name}.bias')"
        )
    if "weight" not in parts:
        raise SneError(f"{source}: '{name}.bias' has no matching '{name}.weight'")
    weight = parts["weight"]
    if weight.dim() == 1:
        raise SneError(
            f"{source}: unknown layer type for '{name}' (BatchNorm-like 1-D weight of shape "
            f"{tuple(weight.shape)}; only linear and convolution layers are supported)"
        )


def record_from_module(module: nn.Module, source: str | None = None) -> NetworkRecord:
    """Record the Linear and Conv1d/2d/3d layers of ``module`` in registration order.

    A layer's activation is the first activation module run after it and before the next layer, as
    far as ``nn.Sequential`` containers make that order certain (pooling, flatten and dropout in
    between are skipped); ``"identity"`` when the next layer or the network's output follows
    directly, ``None`` when the order is unknown. Weights are copied, so the record does not change
    when the module is trained further.
    """
    source = source or f"<{type(module).__name__}>"
    if isinstance(module, LAYER_MODULES):
        # Its parameters would be saved as bare 'weight'/'bias', which records cannot name.
        raise SneError(f"{source}: a lone {type(module).__name__} is not a network; wrap it in nn.Sequential")
    layers: list[Layer] = []
    for name, sub in module.named_modules():
        own = [n for n, _ in sub.named_parameters(recurse=False)] + [n for n, _ in sub.named_buffers(recurse=False)]
        label = f"'{name}' ({type(sub).__name__})" if name else f"{type(sub).__name__}"
        if isinstance(sub, LAYER_MODULES):
            _check_layer_module(sub, label, own, source)
            bias = None if sub.bias is None else sub.bias.detach().clone()
            activation = _activation_after(module, name)
            layers.append(make_layer(name, len(layers), sub.weight.detach().clone(), bias, activation, source=source))
        elif own:
            raise SneError(
                f"{source}: unsupported module {label} with its own parameters or buffers "
                f"(only Linear and Conv1d/2d/3d layers can be recorded)"
            )
    return NetworkRecord(tuple(layers), source=source)


def _check_layer_module(sub: nn.Module, label: str, own: list[str], source: str) -> None:
    if isinstance(sub.weight, nn.parameter.UninitializedParameter):
        raise SneError(f"{source}: lazy module {label} is not initialised yet (run one forward pass first)")
    if getattr(sub, "groups", 1) != 1:
        raise SneError(f"{source}: grouped convolution {label} (groups={sub.groups}) is not supported")
    extra = sorted(set(own) - {"weight", "bias"})
    if extra:
        raise SneError(
            f"{source}: module {label} has parameters or buffers besides weight and bias: {', '.join(extra)}"
        )


def _activation_after(root: nn.Module, name: str) -> str | None:
    following, reaches_output = _modules_after(root, name)
    for sub in following:
        if type(sub).__name__ == "Sine":
            return "sine"
        for cls, activation in ACTIVATION_NAMES.items():
            if isinstance(sub, cls):
                return activation
        if isinstance(sub, LAYER_MODULES):
            return "identity"
        if not isinstance(sub, _PASS_THROUGH):
            return None  # an unknown module: what it computes cannot be told
    return "identity" if reaches_output else None


def _modules_after(root: nn.Module, name: str) -> tuple[list[nn.Module], bool]:
    """The modules run after ``name``, as far as enclosing ``nn.Sequential`` containers make it certain.

    The flag says whether that list runs up to the network's output (every ancestor is a Sequential).
    """
    following: list[nn.Module] = []
    path = name.split(".")
    while path:
        child = path.pop()
        parent = root.get_submodule(".".join(path))
        if not isinstance(parent, nn.Sequential):
            return following, False
        names = [n for n, _ in parent.named_children()]
        for sibling in list(parent.children())[names.index(child) + 1 :]:
            following.extend(_leaves(sibling))
    return following, True


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module.children() for leaf in _leaves(child)]
    return [module]


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors``, or from a PyTorch file (.pt/.pth/.bin/.ckpt) unpickled safely.

    A training checkpoint whose ``state_dict`` or ``model_state_dict`` entry holds the state_dict is
    accepted too. Raises :class:`SneError` naming the file for anything else. safetensors files keep
    no key order: the order :func:`save_state_dict_file` recorded is restored, and keys of other
    safetensors files come in natural order (``layers.2`` before ``layers.10``).
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
    with safe_open(path, framework="pt", device="cpu") as file:
        keys = list(file.keys())
        try:
            order = json.loads((file.metadata() or {}).get(_KEY_ORDER, "null"))
        except json.JSONDecodeError:
            order = None
        if not (isinstance(order, list) and all(isinstance(k, str) for k in order) and sorted(order) == sorted(keys)):
            order = sorted(keys, key=_natural_key)
        return {key: file.get_tensor(key) for key in order}


def _natural_key(key: str) -> list[str | int]:
    # re.split with a group alternates text and digit runs: odd positions are numbers.
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", key))]


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


def load_record(path: str | os.PathLike) -> NetworkRecord:
    """The record of the state_dict in ``path``; its source is the path as given."""
    return record_from_state_dict(load_state_dict_file(path), source=str(path))


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
