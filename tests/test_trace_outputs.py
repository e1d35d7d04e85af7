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
