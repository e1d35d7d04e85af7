"""Architectures given by the user: a factory in a file or package, or a Hugging Face config.json.

``--arch FILE.py:FACTORY`` or ``--arch package.module:FACTORY`` names a function that returns a
module, or a tuple ``(module, example_input)``. The module is traced once
(:func:`sne.weights.trace.record_from_module`); every checkpoint read with it is checked against
that trace (same keys, same shapes) and takes its structure, flow and symmetries.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sne.errors import SneError, one_line
from sne.weights.record import NetworkRecord, check_tensors, record_from_structure
from sne.weights.trace import record_from_module, tied_keys


def unwrapped(state: dict[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` without the prefixes that wrappers put before every key (``module.`` from
    DistributedDataParallel, ``_orig_mod.`` from torch.compile, ``model.`` from a Lightning module):
    of ``state`` and its versions with one, two, ... leading key components peeled (while all keys
    share them), the first with the most keys of ``keys``."""
    best, common = state, len(state.keys() & keys.keys())
    while state and not best.keys() <= keys.keys():
        if len({key.partition(".")[0] for key in state}) != 1 or not all("." in key for key in state):
            break
        state = {key.partition(".")[2]: value for key, value in state.items()}
        if len(state.keys() & keys.keys()) > common:
            best, common = state, len(state.keys() & keys.keys())
    return best


class Arch:
    """A traced architecture: turns state_dicts of that architecture into records."""

    def __init__(self, module: nn.Module, example_input: Any = None, name: str = "",
                 from_saved: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
        """``from_saved`` turns a state_dict in the format its source saves (where that differs from
        the module's keys) into the module's; :class:`SneError` if it cannot."""
        self.name = name or type(module).__name__
        self.template = record_from_module(module, example_input, source=self.name)
        self.keys = self.template.to_state_dict()
        self.tied = tied_keys(module)
        self.from_saved = from_saved

    def record(self, state: Mapping[str, torch.Tensor], source: str) -> NetworkRecord:
        """The record of ``state`` (a state_dict of this architecture, or as its source saves it; a
        tied tensor may be there under one of its keys only); :class:`SneError` naming the first key
        that is missing, unexpected or of another shape."""
        state = unwrapped(dict(state), self.keys)
        if self.from_saved is not None and set(state) - set(self.keys):
            try:
                state = self.from_saved(state)
            except SneError as error:
                raise SneError(f"{source}: {one_line(error)}") from None
        for key in (k for k in self.keys if k not in state):
            twin = next((k for k in self.tied.get(key, ()) if k in state), None)
            if twin is not None:
                state[key] = state[twin]
        missing = [k for k in self.keys if k not in state]
        unexpected = [k for k in state if k not in self.keys]
        if missing or unexpected:
            which = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
            raise SneError(f"{source}: does not fit architecture {self.name} ({which}; "
                           f"{len(missing)} missing, {len(unexpected)} unexpected)")
        layers = []
        for layer in self.template.layers:
            tensors = {}
            for local, expected in layer.tensors.items():
                key = layer.key(local)
                value, stored = state[key], layer.module_layout(local, expected)
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(stored.shape):
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise SneError(f"{source}: '{key}' has shape {shape}, architecture {self.name} "
                                   f"expects {tuple(stored.shape)}")
                tensors[local] = value.to(expected.dtype)
            layers.append(replace(layer, tensors=check_tensors(layer.name, tensors, source)).from_module_layout())
        return NetworkRecord(tuple(layers), source=source, symmetries=self.template.symmetries)


#: The ``--arch`` value that reads files as the architectures a run was trained on (:class:`TrainedArchitectures`).
RUN_ARCH = "run"


class TrainedArchitectures:
    """The architectures of a run's training zoo, as record structures
    (:func:`sne.weights.record.record_structure`, what a zoo's manifest lists): a state_dict is read
    as the first of them whose keys and shapes it has, activations and symmetries included."""

    def __init__(self, structures: list[Mapping[str, Any]], name: str) -> None:
        self.structures, self.name = structures, name
        self.keys = [{(f"{layer['name']}.{t['name']}" if layer["name"] else t["name"]): None
                      for layer in structure["layers"] for t in layer["tensors"]} for structure in structures]
        self.layouts = {tuple((e["kind"], e["level"], tuple((t["name"], tuple(t["shape"])) for t in e["tensors"]))
                              for e in structure["layers"]) for structure in structures}

    def include(self, record: NetworkRecord) -> bool:
        """Whether ``record`` has the layers of one of the training architectures: kinds, levels and
        tensor shapes, whatever its modules are named (``seq.0`` or ``0``)."""
        mine = tuple((layer.kind, layer.level, tuple((n, tuple(layer.module_layout(n, t).shape))
                                                     for n, t in layer.tensors.items())) for layer in record.layers)
        return mine in self.layouts

    def record(self, state: Mapping[str, torch.Tensor], source: str) -> NetworkRecord:
        """The record of ``state`` as the first training architecture it fits; :class:`SneError`
        naming ``source``, where none does, and why the last one with its keys did not."""
        problem = None
        for structure, keys in zip(self.structures, self.keys):
            tensors = unwrapped(dict(state), keys)
            if tensors.keys() == keys.keys():
                try:
                    return record_from_structure(structure, tensors, source)
                except SneError as error:
                    problem = one_line(error).removeprefix(f"{source}: ")
        count = len(self.structures)
        raise SneError(f"{source}: fits none of the {count} architecture{'s' if count > 1 else ''} {self.name} was "
                       f"trained on ({problem or 'its keys differ'}); give --arch FILE.py:FACTORY")


def load_factory(spec: str) -> Callable[[], Any]:
    """The function named by ``FILE.py:FACTORY`` or ``package.module:FACTORY``."""
    target, colon, name = spec.rpartition(":")
    if not colon or not target or not name.isidentifier():
        raise SneError(f"--arch {spec}: expected FILE.py:FACTORY or package.module:FACTORY")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise SneError(f"--arch {spec}: no such file {path}")
        module_name = f"sne_arch_{abs(hash(str(path.resolve())))}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        if loader is None or loader.loader is None:
            raise SneError(f"--arch {spec}: cannot import {path}")
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise SneError(f"--arch {spec}: importing {path} failed ({one_line(exc)})") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise SneError(f"--arch {spec}: cannot import {target} ({one_line(exc)})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise SneError(f"--arch {spec}: {target} has no function {name}")
    return factory


def arch_from_spec(spec: str) -> Arch:
    """Build and trace the architecture named by an ``--arch`` value."""
    factory = load_factory(spec)
    try:
        built = factory()
    except SneError:
        raise
    except Exception as exc:
        raise SneError(f"--arch {spec}: the factory failed ({one_line(exc)})") from None
    module, example = (built if isinstance(built, tuple) and len(built) == 2 else (built, None))
    if not isinstance(module, nn.Module):
        raise SneError(f"--arch {spec}: the factory returned a {type(module).__name__}, not an nn.Module "
                       f"(or a tuple (module, example_input))")
    return Arch(module, example, name=spec)


def arch_from_hf_config(path: str | Path) -> Arch:
    """The architecture a Hugging Face ``config.json`` describes, built offline with ``transformers``
    (optional extra: ``pip install sne[hf]``), as the class the config names (the one that saved the
    weights); traced on a short sequence of token ids, or on an image for an image model."""
    path = Path(path)
    try:
        import transformers  # noqa: PLC0415 - optional extra
    except ImportError:
        raise SneError(f"{path}: reading a Hugging Face config needs the optional extra: pip install 'sne[hf]'") from None
    try:
        config = transformers.AutoConfig.from_pretrained(str(path.parent), local_files_only=True)
        # The class that saved the weights (its keys: GPT2LMHeadModel's start with 'transformer.'),
        # as save_pretrained names it; the bare model when the config names none transformers has.
        named = [getattr(transformers, name, None) for name in getattr(config, "architectures", None) or ()]
        model_class = next((c for c in named if isinstance(c, type) and issubclass(c, nn.Module)), None)
        model = model_class(config) if model_class else transformers.AutoModel.from_config(config)
        model_class = type(model)
    except Exception as exc:
        raise SneError(f"{path}: not a Hugging Face config transformers can build ({one_line(exc)})") from None

    def from_saved(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys as save_pretrained writes them (which may name older module paths, ViT's among them)
        -> the module's, through transformers' own conversion; every tensor must be used and set."""
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            loaded, info = model_class.from_pretrained(None, config=config, state_dict=state, output_loading_info=True)
        except Exception as exc:
            raise SneError(f"transformers cannot load it as {model_class.__name__} ({one_line(exc)})") from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        for problem in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            keys = sorted(map(str, info.get(problem) or ()))
            if keys:
                raise SneError(f"does not fit {model_class.__name__} ({problem.replace('_', ' ')}: {keys[0]}; "
                               f"{len(keys)} in all)")
        return loaded.state_dict()

    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = getattr(config, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        example = torch.randn(1, int(getattr(config, "num_channels", 3)), height, width)
    else:
        example = torch.randint(0, int(getattr(config, "vocab_size", 2) or 2), (1, 8))
    return Arch(model.eval(), example, name=str(path), from_saved=from_saved)


def is_hf_config(path: Path) -> bool:
    try:
        return "model_type" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def network_reader(arch: str | None = None, trained: TrainedArchitectures | None = None
                   ) -> Callable[[str | Path], NetworkRecord]:
    """``read(path) -> record`` for checkpoint files: with ``arch`` (an ``--arch`` value) every file is
    read with that architecture (:data:`RUN_ARCH` with ``trained``: a run's training architectures);
    without it, a Hugging Face ``config.json`` beside a file (or in a model directory) builds that
    file's architecture (once per config), and otherwise the file's own structure is read
    (:func:`sne.weights.io.load_record`). A wrong ``arch`` fails here, before any file is read;
    ``read`` raises a one-line :class:`SneError` naming the file."""
    from sne.weights.io import load_record  # noqa: PLC0415 - io refers back to this module

    built = trained if arch == RUN_ARCH and trained is not None else arch_from_spec(arch) if arch else None
    configs: dict[Path, Arch | SneError] = {}

    def read(path: str | Path) -> NetworkRecord:
        path = Path(path)
        chosen = built
        config = (path if path.is_dir() else path.parent) / "config.json"
        if chosen is None and config.is_file() and is_hf_config(config):
            if config not in configs:
                try:
                    configs[config] = arch_from_hf_config(config)
                except SneError as error:
                    configs[config] = error
            if isinstance(configs[config], SneError):
                raise SneError(_naming(path, one_line(configs[config])))
            chosen = configs[config]
        try:
            return load_record(path, chosen)
        except SneError as error:
            raise SneError(_naming(path, one_line(error))) from None

    return read


def _naming(path: Path, message: str) -> str:
    """``message``, starting with the file it is about."""
    return message if str(path) in message else f"{path}: {message}"
