"""Read checkpoint files and bare state_dicts into records (modules: sne.weights.trace); save state_dicts."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save as _save_safetensors_bytes

from sne.errors import SneError, one_line
from sne.io_utils import write_bytes_atomic
if TYPE_CHECKING:  # only named in an annotation; arch imports this module
    from sne.weights.arch import Arch

from sne.weights.record import (
    Layer, NetworkRecord, check_tensors, make_layer, record_from_structure, record_structure,
)

# Buffers that mark a normalisation layer (BatchNorm and friends) in a state_dict.
_NORM_BUFFERS = {"running_mean", "running_var", "num_batches_tracked"}

# safetensors stores keys sorted, so the layer order is kept in the file's metadata under this key.
_KEY_ORDER = "sne.key_order"
# ... and a record's structure (kinds, activations, data flow, symmetries) under this one.
_STRUCTURE = "sne.structure"

# The entries of a training checkpoint that may hold the model's state_dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")


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
    if any(re.fullmatch(r"(weight|bias)_(ih|hh)_l\d+(_reverse)?", suffix) for suffix in extra):
        raise SneError(f"{source}: recurrent layer '{name}' (LSTM, GRU or RNN: key '{name}.{extra[0]}') is not "
                       f"supported; records read feed-forward networks")
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
    bias = parts.get("bias")
    if bias is not None and tuple(bias.shape) != tuple(weight.shape[:1]):
        # Not a torch.nn layout: weights kept as (inputs, outputs), as GPT-2's Conv1D and TensorFlow
        # dense layers do, or a transposed convolution's (inputs, outputs / groups, ...).
        stored = (" (a weight kept as (inputs, outputs)?)" if bias.dim() == 1 and weight.dim() >= 2
                  and bias.shape[0] == weight.shape[1] else "")
        raise SneError(f"{source}: layer '{name}' has a bias of shape {tuple(bias.shape)} that does not fit its "
                       f"weight of shape {tuple(weight.shape)}{stored}; pass --arch FILE.py:FACTORY, or keep a "
                       f"Hugging Face model's config.json beside its weights")


def _batch_norm(name: str, level: int, parts: dict[str, torch.Tensor], activation, source: str) -> Layer:
    """A batch norm read from its state_dict entries (running statistics mark it unambiguously)."""
    allowed = {"weight", "bias", *_NORM_BUFFERS}
    extra = sorted(set(parts) - allowed)
    if extra or not {"running_mean", "running_var"} <= set(parts):
        key = f"{name}.{extra[0]}" if extra else f"{name}.running_var"
        raise SneError(f"{source}: unknown layer type for '{name}' (unexpected or missing '{key}'); "
                       f"pass --arch FILE.py:FACTORY")
    channels = parts["running_mean"].shape
    expected = f"({channels[0]},)" if len(channels) == 1 else "one value per channel (1-D)"
    for local, tensor in parts.items():
        if local != "num_batches_tracked" and (tensor.dim() != 1 or tensor.shape != channels):
            raise SneError(f"{source}: batch norm '{name}' has '{name}.{local}' of shape {tuple(tensor.shape)}, "
                           f"expected {expected}")
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

    A training checkpoint whose ``state_dict``, ``model_state_dict`` or ``model`` entry holds the
    state_dict is accepted too, and so is a model directory as Hugging Face's ``save_pretrained``
    writes it (``model.safetensors``, or shards and their ``model.safetensors.index.json``). Raises
    :class:`SneError` naming the file for anything else. A safetensors file keeps the order
    :func:`save_state_dict_file` recorded, or else the order of its own header.

    A damaged file never allocates more than its own size suggests: a safetensors header is checked
    against the file (every tensor inside it, its size that of its dtype and shape) before any tensor
    is read, a zip checkpoint's records against the archive, and a legacy (pre-zip) PyTorch file's
    storages against the file's size. float8 tensors are read as float32 (exactly).
    """
    path = Path(path)
    try:
        return _load_model_directory(path) if path.is_dir() else _load_state_dict_file(path)
    except SneError as error:
        raise _one_line_error(error) from None


#: What a Hugging Face model directory keeps its weights in: one file, or shards listed by an index.
MODEL_DIRECTORY_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _load_model_directory(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a model directory as ``save_pretrained`` writes it: ``model.safetensors``,
    or the shards ``model.safetensors.index.json`` maps every key to (each key read from its shard)."""
    single, index = (path / name for name in MODEL_DIRECTORY_WEIGHTS)
    if single.is_file():
        return _load_state_dict_file(single)
    if not index.is_file():
        raise SneError(f"{path}: a directory without {' or '.join(MODEL_DIRECTORY_WEIGHTS)}; name a checkpoint file")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())):
            raise TypeError("weight_map is not an object of file names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SneError(f"{index}: not a readable shard index ({one_line(exc)})") from None
    keys_of: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        keys_of.setdefault(shard, []).append(key)
    state: dict[str, torch.Tensor] = {}
    for shard, wanted in keys_of.items():
        shard_path = path / shard
        if Path(shard).name != shard or shard_path.suffix != ".safetensors":
            raise SneError(f"{index}: shard {shard!r} is not a safetensors file beside the index")
        tensors = _load_state_dict_file(shard_path)
        missing = [key for key in wanted if key not in tensors]
        if missing:
            raise SneError(f"{shard_path}: lacks '{missing[0]}', which {index.name} puts there")
        state.update((key, tensors[key]) for key in wanted)
    return state


def _one_line_error(error: SneError) -> SneError:
    """``error``, squeezed onto one line where a name it quotes from a damaged file broke it."""
    return error if len(str(error).splitlines()) == 1 else SneError(one_line(error))


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    size = _checked_size(path)
    if path.suffix == ".safetensors":
        try:
            state = _read_safetensors(path)
        except SneError:
            raise
        except Exception as exc:  # SafetensorError, and OSError/TypeError for unreadable or exotic content
            raise SneError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None
        return _check_state_tensors(state, path)
    obj = _torch_load(path, size, allowed_globals=())
    return _check_state_tensors(_as_state_dict(obj, path), path)


def load_pytorch_object(path: str | os.PathLike, allowed_globals: Sequence[Any] = ()) -> Any:
    """Unpickle a PyTorch file with ``weights_only=True``: tensors, containers and plain values only,
    plus exactly ``allowed_globals`` (classes, or ``(class, "module.Name")`` pairs that stand in for a
    name the file refers to; see ``torch.serialization.safe_globals``). No other code in the file is
    ever run; anything else it names is refused with :class:`SneError` naming the file."""
    path = Path(path)
    try:
        size = _checked_size(path)
        return _torch_load(path, size, allowed_globals)
    except SneError as error:
        raise _one_line_error(error) from None


def _checked_size(path: Path) -> int:
    try:
        if not path.is_file():
            raise SneError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
        size = path.stat().st_size
    except OSError as exc:  # a path too long, a directory without permission, ...
        raise SneError(f"{path}: cannot read ({one_line(exc)})") from None
    if size == 0:
        raise SneError(f"{path}: empty file")
    return size


def _torch_load(path: Path, size: int, allowed_globals: Sequence[Any]) -> Any:
    try:
        _check_pytorch_sizes(path, size)
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed_globals)):
            # torch warns about pickle protocols it may not support; the outcome is reported below.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except SneError:
        raise
    except pickle.UnpicklingError as exc:
        # torch names a refused global in one of two phrasings (a blocked module's is the second).
        refused = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        if refused:
            raise SneError(
                f"{path}: not a plain state_dict (refused to unpickle {refused.group(1)}; "
                f"save model.state_dict() instead of objects or whole modules)"
            ) from None
        raise SneError(f"{path}: not a PyTorch checkpoint, or it is corrupt ({_unpickler_reason(exc)})") from None
    except Exception as exc:  # torch.load raises many types (RuntimeError, EOFError, ...) for a bad file
        raise SneError(f"{path}: not a PyTorch checkpoint, or it is corrupt ({one_line(exc)})") from None


def _check_state_tensors(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Refuse names with control characters (a damaged file: every message quoting the name must
    stay one line) and tensors without plain data (sparse, meta); widen float8 to float32 (exact),
    which the rest of sne, like most of torch, cannot compute with."""
    for key, value in state.items():
        if not key.isprintable():
            raise SneError(f"{path}: entry {key!r} has a name with control characters (a damaged file?)")
        if value.layout != torch.strided:
            raise SneError(f"{path}: entry '{key}' is a {str(value.layout).replace('torch.', '')} tensor "
                           f"(save dense weights)")
        if value.is_meta:
            raise SneError(f"{path}: entry '{key}' holds no data (a meta tensor)")
        if value.is_floating_point() and value.element_size() == 1:
            state[key] = value.to(torch.float32)
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    keys, metadata = _safetensors_header(path)
    try:
        order = json.loads(metadata.get(_KEY_ORDER, "null"))
    except json.JSONDecodeError:
        order = None
    if not (isinstance(order, list) and all(isinstance(k, str) for k in order) and sorted(order) == sorted(keys)):
        order = keys
    with safe_open(path, framework="pt", device="cpu") as file:
        return {key: file.get_tensor(key) for key in order}


#: Bytes per element of the safetensors dtypes torch can read.
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


def _safetensors_header(path: Path) -> tuple[list[str], dict]:
    """Tensor names in the order of the file's own header (``safe_open`` would sort them) and the
    header's metadata, after checking the whole header against the file: each tensor's dtype is
    known, its byte range lies inside the file and holds exactly dtype x shape, and the ranges tile
    the data without gaps or overlaps. So nothing is allocated for a tensor the file cannot hold.
    Raises :class:`SneError` naming ``path``."""
    def refuse(reason: str) -> SneError:
        return SneError(f"{path}: not a readable safetensors file ({reason})")

    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise refuse("file shorter than its 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise refuse(f"header of {length} bytes claimed in a file of {size} bytes")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise refuse(f"header is not JSON: {one_line(exc)}") from None
    if not isinstance(header, dict):
        raise refuse("header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise refuse("__metadata__ is not a map of strings")
    data_size = size - 8 - length
    ranges = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise refuse(f"entry {key!r} is not a tensor description")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _SAFETENSORS_ITEMSIZE:
            raise refuse(f"tensor {key!r} has unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise refuse(f"tensor {key!r} has invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise refuse(f"tensor {key!r} has data offsets {offsets!r} outside the file's {data_size} data bytes")
        numel = 1
        for dim in shape:
            numel *= dim
        if offsets[1] - offsets[0] != numel * _SAFETENSORS_ITEMSIZE[dtype]:
            raise refuse(f"tensor {key!r} of dtype {dtype} and shape {shape} does not fit its "
                         f"{offsets[1] - offsets[0]} bytes")
        ranges.append((offsets[0], offsets[1], key))
    end = 0
    for begin, stop, key in sorted(ranges):
        if begin != end:
            raise refuse(f"tensor {key!r} overlaps another or leaves a gap in the data")
        end = stop
    if end != data_size:
        raise refuse(f"tensors cover {end} of the file's {data_size} data bytes")
    return [key for key in header if key != "__metadata__"], metadata


#: Bytes per element of the storages a legacy (pre-zip) PyTorch file names.
_LEGACY_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1,
}
# The pickles of a legacy file are read from at most this many leading bytes (an underestimate of
# the storages' sizes past it only leaves the check to torch.load).
_LEGACY_PICKLE_BYTES = 64 << 20
#: Pickle opcodes that push an integer (a storage's size in a legacy file).
_PICKLE_INT_OPCODES = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
# deflate cannot compress by more than about 1032:1; a zip record claiming more is damaged.
_MAX_DEFLATE_RATIO = 1100


def _check_pytorch_sizes(path: Path, size: int) -> None:
    """Refuse a PyTorch file whose records or storages claim more bytes than the file can hold,
    before ``torch.load`` allocates them (it trusts a legacy file's storage sizes, and a zip
    record's size from the archive's directory)."""
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                entries = archive.infolist()
        except Exception:  # noqa: BLE001 - let torch.load report an archive Python cannot read
            return
        for entry in entries:
            stored = entry.compress_type == zipfile.ZIP_STORED
            limit = entry.compress_size if stored else entry.compress_size * _MAX_DEFLATE_RATIO + 1024
            if entry.file_size > limit or entry.header_offset + entry.compress_size > size:
                raise SneError(f"{path}: not a PyTorch checkpoint, or it is corrupt (record {entry.filename!r} "
                               f"claims {entry.file_size} bytes in a file of {size} bytes)")
        return
    claimed = _legacy_storage_bytes(path)
    if claimed > size:
        raise SneError(f"{path}: not a PyTorch checkpoint, or it is corrupt (its storages claim {claimed} bytes "
                       f"in a file of {size} bytes)")


def _legacy_storage_bytes(path: Path) -> int:
    """Bytes that the storages of a legacy PyTorch file claim (its pickles read as opcodes only,
    nothing executed; a storage shared by several tensors counted once); 0 where the file is not
    one, and what was counted so far where a pickle is damaged (``torch.load`` then reports it)."""
    claims: dict[str, int] = {}
    try:
        with open(path, "rb") as handle:  # the pickles come before the storages' data
            file = io.BytesIO(handle.read(_LEGACY_PICKLE_BYTES))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickletools warns about escapes in damaged strings
            _count_legacy_claims(file, claims)
    except Exception:  # noqa: BLE001 - not a legacy pickle, or a damaged one: torch.load reports it
        pass
    return sum(claims.values())


def _count_legacy_claims(file: io.BytesIO, claims: dict[str, int]) -> None:
    """Add each storage's claimed bytes to ``claims`` (by storage key), pickle by pickle."""
    for _ in range(4):  # magic number, protocol version, system info, then the object
        storage, strings, memo, last = None, [], {}, None
        for opcode, arg, _pos in pickletools.genops(file):
            name = opcode.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = last
                continue
            # Pickle memoizes repeated strings and globals: a later storage gets them by index.
            value = memo.get(arg) if name in ("GET", "BINGET", "LONG_BINGET") else arg
            if name in ("GLOBAL", "STACK_GLOBAL") or isinstance(value, tuple):
                value = ("global", arg) if isinstance(arg, str) else value
            last = value
            if isinstance(value, tuple) and str(value[1]).startswith("torch "):
                storage, strings = value[1].split(" ", 1)[1], []
                if storage not in _LEGACY_STORAGE_ITEMSIZE:
                    storage = None
            elif storage and isinstance(value, str):
                strings.append(value)  # the storage's key, then its location
            elif storage and len(strings) >= 2 and name in _PICKLE_INT_OPCODES:
                claims[strings[0]] = max(arg, 0) * _LEGACY_STORAGE_ITEMSIZE[storage]
                storage = None


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise SneError(f"{path}: holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
    nested = [key for key in _NESTED_STATE_KEYS if isinstance(obj.get(key), Mapping)]
    if len(nested) > 1:
        raise SneError(f"{path}: ambiguous checkpoint with {' and '.join(repr(k) for k in nested)} entries")
    if nested:
        obj = obj[nested[0]]
    for key, value in obj.items():
        if not isinstance(key, str):
            raise SneError(f"{path}: key {key!r} is not a string (expected a state_dict)")
        if not isinstance(value, torch.Tensor):
            raise SneError(
                f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor (expected a state_dict, "
                f"or a checkpoint with a {', '.join(repr(k) for k in _NESTED_STATE_KEYS)} entry)"
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
    try:
        if arch is None:
            structure = _saved_structure(Path(path))
            if structure is not None:
                return record_from_structure(structure, state, source=str(path))
            return record_from_state_dict(state, source=str(path))
        return arch.record(state, source=str(path))
    except SneError as error:
        raise _one_line_error(error) from None


def _saved_structure(path: Path) -> Any:
    """The record structure :func:`save_record_file` kept in a safetensors file's metadata, or ``None``."""
    if path.suffix != ".safetensors":
        return None
    text = _safetensors_header(path)[1].get(_STRUCTURE)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SneError(f"{path}: the network structure in its metadata is not JSON ({one_line(exc)})") from None


def save_record_file(record: NetworkRecord, path: str | os.PathLike) -> None:
    """Write ``record`` atomically as a safetensors file of its state_dict that keeps, in the file's
    metadata, its structure (:func:`sne.weights.record.record_structure`): :func:`load_record` then
    gives back the same record without ``--arch``; any other safetensors reader sees a plain state_dict."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SneError(f"{path}: a record file must end in .safetensors")
    structure = json.dumps(record_structure(record), separators=(",", ":"))
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in record.to_state_dict().items()}
    write_bytes_atomic(path, _safetensors_bytes(tensors, {_KEY_ORDER: json.dumps(list(tensors)), _STRUCTURE: structure}))


def save_state_dict_file(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` atomically: safetensors for a ``.safetensors`` suffix, ``torch.save`` otherwise."""
    path = Path(path)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise SneError(f"{path}: cannot save entry {key!r} of type {type(value).__name__} (tensors only)")
    # Contiguous clones: safetensors refuses views and tensors that share storage.
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}
    if path.suffix == ".safetensors":
        data = _safetensors_bytes(tensors, {_KEY_ORDER: json.dumps(list(tensors))})
    else:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        data = buffer.getbuffer()
    # Serialised in memory: both libraries' own file writers report a full disk in opaque errors.
    write_bytes_atomic(path, data)


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return _save_safetensors_bytes(tensors, metadata=metadata)
