"""Records from modules, state_dicts and files, and the errors for inputs that are not networks."""

from __future__ import annotations

import errno

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from sne.errors import SneError
from sne.weights import (
    load_record,
    load_state_dict_file,
    record_from_module,
    record_from_state_dict,
    save_state_dict_file,
)
from sne.weights import io as weights_io


class Sine(nn.Module):
    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)


class NotAModel:
    """A class only a full unpickler could rebuild."""


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def assert_state_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- record_from_module -------------------------------------------------------------------------


def test_module_record_round_trip():
    model = mlp()
    record = record_from_module(model)
    assert [l.name for l in record.layers] == ["0", "2", "4"]
    assert [l.level for l in record.layers] == [0, 1, 2]
    assert [l.kind for l in record.layers] == ["linear"] * 3
    assert [tuple(l.weight.shape) for l in record.layers] == [(16, 3), (16, 16), (2, 16)]
    assert [l.activation for l in record.layers] == ["tanh", "relu", "identity"]
    assert record.source == "<Sequential>"
    assert_state_equal(record.to_state_dict(), model.state_dict())


def test_module_record_is_a_snapshot():
    model = mlp()
    record = record_from_module(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(record.layers[0].weight, model[0].weight)


def test_module_cnn_activations_through_pooling_and_nesting():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 5), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 6, 5), nn.MaxPool2d(2), nn.ELU()),
        nn.Conv2d(6, 4, 2),
        nn.Dropout(0.1),
        nn.Conv2d(4, 4, 1),
        nn.GELU(),
        nn.Flatten(),
        nn.Linear(36, 20),
        nn.LeakyReLU(),
        nn.Linear(20, 10),
        nn.Sigmoid(),
    )
    record = record_from_module(model, source="arch2")
    assert [l.name for l in record.layers] == ["0.0", "1.0", "2", "4", "7", "9"]
    assert [l.kind for l in record.layers] == ["conv2d"] * 4 + ["linear"] * 2
    assert [l.activation for l in record.layers] == ["relu", "elu", "identity", "gelu", "leaky_relu", "sigmoid"]
    assert record.source == "arch2"
    assert_state_equal(record.to_state_dict(), model.state_dict())


def test_module_siren_and_silu_activations():
    model = nn.Sequential(nn.Linear(1, 32), Sine(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1), nn.Identity())
    assert [l.activation for l in record_from_module(model).layers] == ["sine", "silu", "identity"]


def test_module_activation_of_functional_calls():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    record = record_from_module(Net())
    assert [l.name for l in record.layers] == ["fc1", "fc2"]
    # The traced graph tells functional activations too.
    assert [l.activation for l in record.layers] == ["relu", "identity"]
    record = record_from_module(nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=1)))
    assert record.layers[0].activation == "softmax"


def test_module_without_bias():
    record = record_from_module(nn.Sequential(nn.Conv1d(2, 4, 3, bias=False), nn.ReLU(), nn.Conv1d(4, 1, 1)))
    assert record.layers[0].bias is None
    assert [l.kind for l in record.layers] == ["conv1d", "conv1d"]


@pytest.mark.parametrize(
    ("module", "needle"),
    [
        (nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 4)), "recurrent layer '1' (LSTM)"),
        (nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 4)), "recurrent layer '1' (GRU)"),
        (nn.Sequential(nn.Linear(4, 4), nn.PReLU()), "unsupported module '1' (PReLU)"),
        (nn.Sequential(nn.LazyLinear(3)), "lazy"),
        (nn.Linear(3, 2), "wrap it in nn.Sequential"),
        (nn.Sequential(nn.ReLU()), "no parameters"),
    ],
)
def test_module_unsupported(module, needle):
    with pytest.raises(SneError, match="^<") as info:
        record_from_module(module)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


# --- record_from_state_dict ---------------------------------------------------------------------


def test_state_dict_round_trip():
    model = nn.Sequential(nn.Conv3d(2, 3, 3), nn.ReLU(), nn.Conv1d(3, 3, 1), nn.Conv2d(3, 4, 7), nn.Linear(4, 5))
    state = model.state_dict()
    record = record_from_state_dict(state, source="m.pt", activations=["relu", None, "tanh", "identity"])
    assert [l.kind for l in record.layers] == ["conv3d", "conv1d", "conv2d", "linear"]
    assert [l.level for l in record.layers] == [0, 1, 2, 3]
    assert [l.kernel_shape for l in record.layers] == [(3, 3, 3), (1,), (7, 7), ()]
    assert [l.activation for l in record.layers] == ["relu", None, "tanh", "identity"]
    assert record.source == "m.pt"
    assert_state_equal(record.to_state_dict(), state)
    assert all(l.activation is None for l in record_from_state_dict(state).layers)


@pytest.mark.parametrize("kernel", [(1,), (5,), (1, 1), (3, 3), (5, 5), (7, 7), (3, 5), (1, 1, 1), (3, 3, 3)])
def test_kernel_sizes_accepted(kernel):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(kernel)]
    state = nn.Sequential(conv(2, 3, kernel), conv(3, 1, kernel)).state_dict()
    record = record_from_state_dict(state)
    assert [l.kernel_shape for l in record.layers] == [kernel, kernel]


def test_state_dict_groups_keys_in_order_of_first_appearance():
    state = {"b.weight": torch.ones(2, 3), "a.weight": torch.ones(4, 2), "b.bias": torch.zeros(2)}
    record = record_from_state_dict(state)
    assert [(l.name, l.level, l.bias is not None) for l in record.layers] == [("b", 0, True), ("a", 1, False)]


def test_bare_state_dict_reads_only_what_is_unambiguous():
    # Running statistics mark a batch norm; a 1-D weight without them could be any normalisation.
    state = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)).state_dict()
    record = record_from_state_dict(state, source="model.pt")
    assert [l.kind for l in record.layers] == ["conv2d", "batch_norm", "conv2d"]
    assert_state_equal(record.to_state_dict(), state)
    layernorm = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).state_dict()
    with pytest.raises(SneError, match=r"^m: unknown layer type for '1' \(a normalisation\?.*--arch"):
        record_from_state_dict(layernorm, source="m")
    # A depthwise convolution is never read as a dense one with a single input channel.
    depthwise = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=4)).state_dict()
    with pytest.raises(SneError, match=r"^dw\.pt: ambiguous without the architecture: '1\.weight'.*depthwise.*--arch"):
        record_from_state_dict(depthwise, source="dw.pt")
    # Nor is an embedding read as a linear layer.
    embedding = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)).state_dict()
    with pytest.raises(SneError, match=r"^e: ambiguous.*'1\.weight'.*embedding"):
        record_from_state_dict(embedding, source="e")


def test_module_reads_every_kind():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.pos = nn.Parameter(torch.randn(1, 5, 8))
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.norm = nn.LayerNorm(8)
            self.conv = nn.Conv1d(8, 8, 3, padding=1, groups=8)
            self.bn = nn.BatchNorm1d(8)
            self.up = nn.ConvTranspose1d(8, 4, 2, stride=2)
            self.gn = nn.GroupNorm(2, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, tokens):
            x = self.embed(tokens) + self.pos
            x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
            x = self.gn(self.up(torch.relu(self.bn(self.conv(x.transpose(1, 2))))))
            return self.head(x.mean(-1))

    model = Net().eval()
    record = record_from_module(model, torch.randint(0, 10, (2, 5)))
    kinds = {l.name: l.kind for l in record.layers}
    assert kinds == {"embed": "embedding", "": "parameter", "attn": "attention", "norm": "layer_norm",
                     "conv": "conv1d", "bn": "batch_norm", "up": "conv_transpose1d", "gn": "group_norm",
                     "head": "linear"}
    assert record.layers[[l.name for l in record.layers].index("conv")].attrs["groups"] == 8
    assert set(record.to_state_dict()) == set(model.state_dict())
    model.load_state_dict(record.to_state_dict(), strict=True)


@pytest.mark.parametrize(
    ("state", "needle"),
    [
        ({"fc.weight": torch.ones(2, 2), "fc.scale": torch.ones(2)}, "'fc.scale'"),
        ({"weight": torch.ones(2, 2)}, "cannot tell what 'weight' is"),
        ({"fc.bias": torch.ones(2)}, "'fc.bias' has no matching 'fc.weight'"),
        ({"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(3)}, "'fc' has a bias of shape (3,)"),
        ({"fc.weight": torch.ones(2, 2), "epoch": 3}, "'epoch' is a int"),
        ({"fc.weight": torch.ones(2, 2, 2, 2, 2, 2)}, "unknown layer type for 'fc'"),
        ({"fc.weight": torch.ones(2, 2, dtype=torch.int64)}, "non-floating-point"),
        ({"fc.weight": torch.tensor([[1.0, float("nan")]])}, "non-finite"),
    ],
)
def test_state_dict_bad_entries(state, needle):
    with pytest.raises(SneError) as info:
        record_from_state_dict(state, source="ck.pt")
    assert str(info.value).startswith("ck.pt: ")
    assert needle in str(info.value)


def test_state_dict_activation_count_checked():
    with pytest.raises(SneError, match="1 activations given for 3 layers"):
        record_from_state_dict(mlp().state_dict(), activations=["relu"])


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin", ".ckpt"])
def test_save_and_load_record(tmp_path, suffix):
    state = mlp().state_dict()
    path = tmp_path / f"net{suffix}"
    save_state_dict_file(state, path)
    assert_state_equal(load_state_dict_file(path), state)
    record = load_record(path)
    assert record.source == str(path)
    assert_state_equal(record.to_state_dict(), state)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def _write_raw_safetensors(path: Path, tensors: dict) -> None:
    """A safetensors file whose header lists tensors in the given order (as other writers may)."""
    header, offset, data = {}, 0, b""
    for key, tensor in tensors.items():
        raw = tensor.contiguous().numpy().tobytes()
        header[key] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        offset, data = offset + len(raw), data + raw
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_safetensors_keeps_layer_order(tmp_path):
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    model.add_module("a_head", nn.Linear(2, 1))
    path = tmp_path / "deep.safetensors"
    save_state_dict_file(model.state_dict(), path)
    assert_state_equal(load_state_dict_file(path), model.state_dict())
    # A file written elsewhere keeps the order of its own header, never a sort of its names.
    state = {"encoder.weight": torch.ones(3, 2), "encoder.bias": torch.ones(3), "decoder.weight": torch.ones(2, 3)}
    _write_raw_safetensors(path, state)
    assert list(load_state_dict_file(path)) == list(state)
    assert [l.name for l in load_record(path).layers] == ["encoder", "decoder"]


def test_save_views_and_shared_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a.weight": base.t(), "b.weight": base, "c.weight": base[:2]}
    save_state_dict_file(state, tmp_path / "v.safetensors")
    assert_state_equal(load_state_dict_file(tmp_path / "v.safetensors"), state)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_load_training_checkpoint(tmp_path, key):
    state = mlp().state_dict()
    path = tmp_path / "train.ckpt"
    torch.save({"epoch": 3, key: state, "optimizer": {"lr": 0.1}}, path)
    assert_state_equal(load_state_dict_file(path), state)


def test_save_failure_keeps_old_file(tmp_path, monkeypatch):
    """A disk that fills while the new file is written: one error naming the file, the old file kept."""
    path = tmp_path / "net.safetensors"
    save_state_dict_file(mlp().state_dict(), path)
    before = path.read_bytes()
    real_write = Path.write_bytes

    def crash(self, data):
        real_write(self, b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", crash)
    with pytest.raises(SneError, match=f"{path.name}.*No space left"):
        save_state_dict_file({"x.weight": torch.ones(1, 1)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_refuses_non_tensors(tmp_path):
    path = tmp_path / "n.pt"
    with pytest.raises(SneError, match="n.pt: cannot save entry 'epoch'"):
        save_state_dict_file({"epoch": 3}, path)
    assert not path.exists()


def _write_bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.safetensors"
    save_state_dict_file(mlp().state_dict(), good)
    data = good.read_bytes()
    files = {
        "truncated_safetensors": (tmp_path / "truncated.safetensors", data[: len(data) // 2]),
        "cut_header_safetensors": (tmp_path / "cut.safetensors", data[:5]),
        "garbage_safetensors": (tmp_path / "garbage.safetensors", b"\x00garbage" * 20),
        "garbage_pt": (tmp_path / "garbage.pt", b"not a checkpoint at all" * 5),
        "empty_pt": (tmp_path / "empty.pt", b""),
        "raw_pickle": (tmp_path / "raw.pkl", pickle.dumps({"fc.weight": [1.0]}, protocol=4)),
    }
    out = {}
    for label, (path, content) in files.items():
        path.write_bytes(content)
        out[label] = path
    zipped = tmp_path / "zipped.pt"
    torch.save(mlp().state_dict(), zipped)
    zipped.write_bytes(zipped.read_bytes()[:200])
    out["truncated_pt"] = zipped
    return out


@pytest.mark.parametrize(
    ("label", "needle"),
    [
        ("truncated_safetensors", "not a readable safetensors file"),
        ("cut_header_safetensors", "not a readable safetensors file"),
        ("garbage_safetensors", "not a readable safetensors file"),
        ("garbage_pt", "not a PyTorch checkpoint, or it is corrupt"),
        ("empty_pt", "empty file"),
        ("raw_pickle", "not a PyTorch checkpoint, or it is corrupt"),
        ("truncated_pt", "not a PyTorch checkpoint, or it is corrupt"),
    ],
)
def test_corrupt_files(tmp_path, label, needle):
    path = _write_bad_files(tmp_path)[label]
    with pytest.raises(SneError) as info:
        load_record(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        (NotAModel(), "not a plain state_dict (refused to unpickle"),
        (nn.Sequential(nn.Linear(2, 2)), "not a plain state_dict (refused to unpickle torch.nn.modules"),
        ([torch.ones(2, 2)], "holds a list, not a state_dict"),
        ({"fc.weight": "abc"}, "entry 'fc.weight' is a str, not a tensor"),
        ({"state_dict": {"a.weight": torch.ones(1, 1)}, "model_state_dict": {}}, "ambiguous checkpoint"),
        ({"fc.weight": torch.tensor([[float("inf")]])}, "layer 'fc' has non-finite values"),
        ({"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(5)}, "layer 'fc' has a bias of shape (5,)"),
        # GPT-2's Conv1D keeps its weight as (inputs, outputs): its file alone is not a torch.nn chain.
        ({"c_fc.weight": torch.ones(4, 8), "c_fc.bias": torch.ones(8)},
         "has a bias of shape (8,) that does not fit its weight of shape (4, 8) (a weight kept as (inputs, "
         "outputs)?); pass --arch FILE.py:FACTORY"),
        (nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)).state_dict(), "unknown layer type for '1'"),
    ],
)
def test_unusable_pickles(tmp_path, obj, needle):
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    with pytest.raises(SneError) as info:
        load_record(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message
    assert "\n" not in message


def test_nan_weights_in_safetensors(tmp_path):
    path = tmp_path / "nan.safetensors"
    save_state_dict_file({"net.0.weight": torch.tensor([[1.0, float("nan")]])}, path)
    with pytest.raises(SneError, match=r"nan\.safetensors: layer 'net\.0' has non-finite values"):
        load_record(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SneError, match=r"absent\.pt: no such file"):
        load_record(tmp_path / "absent.pt")
    with pytest.raises(SneError, match=r"absent\.safetensors: no such file"):
        load_state_dict_file(tmp_path / "absent.safetensors")
    # A directory is read only as a model directory (model.safetensors or a shard index inside).
    with pytest.raises(SneError, match="a directory without model.safetensors or model.safetensors.index.json"):
        load_state_dict_file(tmp_path)
