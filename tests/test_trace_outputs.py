"""Tracing modules whose forward returns more than tensors: a cache object, a Hugging Face output
with its key-value cache. The record must be the network's, with the symmetries it has, and the
module must come back as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sne.errors import SneError
from sne.weights.permute import random_equivalent_permutation
from sne.weights.trace import record_from_module


class _Cache:
    """Inference state torch.export cannot flatten."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys


class _WithCache(nn.Module):
    """A two-layer MLP whose forward also returns a cache that starts as an empty 1-D tensor."""

    def __init__(self, returns_cache: bool = True) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 6)
        self.out = nn.Linear(6, 2)
        self.returns_cache = returns_cache

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        keys = torch.cat([torch.tensor([], dtype=h.dtype), h], dim=-1)  # torch.cat skips the empty 1-D tensor
        logits = self.out(keys)
        return {"logits": logits, "cache": _Cache(keys)} if self.returns_cache else logits


class _NoTensors(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return _Cache(self.fc(x))


def _assert_equivalent_under_permutation(module: nn.Module, record, call) -> None:
    twin = copy.deepcopy(module).double()
    with torch.no_grad():
        reference = call(twin)
        twin.load_state_dict(random_equivalent_permutation(record.to(torch.float64),
                                                           torch.Generator().manual_seed(0)).to_state_dict())
        torch.testing.assert_close(call(twin), reference, rtol=1e-10, atol=1e-10)


def test_a_forward_returning_a_cache_object_records_the_network():
    torch.manual_seed(0)
    module = _WithCache()
    plain = copy.deepcopy(module)
    plain.returns_cache = False
    x = torch.randn(4, 3)
    record = record_from_module(module, x)
    assert [layer.name for layer in record.layers] == ["hidden", "out"]
    # The same symmetries as the module that returns its logits alone: the hidden units stay free.
    assert record.symmetries == record_from_module(plain, x).symmetries
    assert any(group.size == 6 for group in record.symmetries)
    assert type(module) is _WithCache  # the class is given back after tracing
    _assert_equivalent_under_permutation(module, record, lambda m: m(x.double())["logits"])


def test_a_forward_without_tensors_is_refused_in_one_line():
    with pytest.raises(SneError) as info:
        record_from_module(_NoTensors(), torch.randn(2, 3), source="odd.pt")
    message = str(info.value)
    assert message.startswith("odd.pt: could not trace _NoTensors") and "\n" not in message


def test_hugging_face_causal_lm_is_traced_without_its_cache():
    transformers = pytest.importorskip("transformers")  # part of the test extra; optional for users
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.config.use_cache  # the default, under which the forward returns a key-value cache
    tokens = torch.randint(0, 40, (1, 8))
    record = record_from_module(model, tokens, source="gpt2")
    assert model.config.use_cache  # given back
    names = {group.name.split(" of ")[0] for group in record.symmetries}
    assert "heads" in names, names
    _assert_equivalent_under_permutation(model, record, lambda m: m(input_ids=tokens).logits)


def test_hugging_face_conv1d_is_a_linear_layer_given_back_as_stored():
    """GPT-2 stores its projections (in, out) in transformers' Conv1D: the record reads them as
    linear layers (out, in) and every way back to a state_dict restores the module's layout."""
    transformers = pytest.importorskip("transformers")
    from sne.encoders import build_encoder
    from sne.weights.arch import Arch
    from sne.weights.record import record_from_structure, record_structure

    config = transformers.GPT2Config(vocab_size=20, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # no constant tensors (norms at 1, biases at 0): nothing to standardise by zero
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    tokens = torch.randint(0, 20, (1, 6))
    record = record_from_module(model, tokens, source="gpt2")
    c_fc = next(layer for layer in record.layers if layer.name.endswith("mlp.c_fc"))
    assert c_fc.kind == "linear" and c_fc.attrs["stored_in_out"]
    assert torch.equal(c_fc.weight, model.transformer.h[0].mlp.c_fc.weight.t())
    assert (c_fc.in_features, c_fc.out_features) == (16, 64)
    state = model.state_dict()
    for again in (record, record_from_structure(record_structure(record), state, "gpt2"),
                  Arch(model, tokens).record(state, "gpt2")):
        assert all(torch.equal(again.to_state_dict()[k], state[k]) for k in state)
        assert all(torch.equal(a.weight, b.weight) for a, b in zip(again.layers, record.layers))
    structure = record_structure(record)
    norm = next(layer for layer in structure["layers"] if layer["kind"] == "layer_norm")
    norm["attrs"]["stored_in_out"] = True
    with pytest.raises(SneError, match="marked stored_in_out but is no linear layer"):
        record_from_structure(structure, state, "gpt2")
    # Symmetries act on the record's layout: the module's function is kept, and so is the code of
    # an exactly invariant encoder that reads the layers as linear maps (a neural graph refuses a
    # free (in, out) parameter). SNE reads it too, invariant only where a chunk holds one neuron.
    _assert_equivalent_under_permutation(model, record, lambda m: m(input_ids=tokens).logits)
    double = record.to(torch.float64)
    sne = build_encoder("sne", {"hidden": 16}).double().eval()
    assert torch.isfinite(sne(sne.prepare([double]))).all()
    for name, options in (("ng_gnn", {"max_input_neurons": 64}), ("deepsets", {})):
        torch.manual_seed(0)
        encoder = build_encoder(name, options).double().eval()
        with torch.no_grad():
            twin = random_equivalent_permutation(double, torch.Generator().manual_seed(1))
            z = encoder(encoder.prepare([double, twin]))
        torch.testing.assert_close(z[0], z[1], atol=1e-9, rtol=0)
