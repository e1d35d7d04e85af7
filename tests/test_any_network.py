"""Any network in: ResNets, ViTs, GPT-style, MobileNet-style and UNet records are complete, their
symmetries exact in float64, and the CLI reads them through --arch."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import network_families as families
from conftest import run_cli
from sne.errors import SneError
from sne.weights import (
    load_record,
    random_equivalent_permutation,
    record_from_module,
    record_from_state_dict,
    save_state_dict_file,
)
from sne.weights.arch import Arch, arch_from_spec
from sne.weights.permute import symmetry_groups

ALL = [*families.FAMILIES.items(), *families.HELD_OUT_VARIANTS, *families.MORE_WIRINGS]
TESTS = Path(__file__).parent


def _outputs(module: nn.Module, example: torch.Tensor) -> torch.Tensor:
    inputs = example.double() if example.is_floating_point() else example
    with torch.no_grad():
        return module.double()(inputs)


@pytest.mark.parametrize(("name", "factory"), ALL, ids=[name for name, _ in ALL])
def test_record_is_complete_and_its_permutations_keep_the_function(name, factory):
    module, example = factory()
    record = record_from_module(module, example)
    state = module.state_dict()
    # Every parameter and buffer, under the module's own keys, restores the module exactly.
    saved = record.to_state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in state)
    twin = copy.deepcopy(module)
    twin.load_state_dict(saved, strict=True)

    reference = _outputs(module, example)
    double = record.to(torch.float64)
    for seed in range(2):
        permuted = random_equivalent_permutation(double, torch.Generator().manual_seed(seed))
        moved = [k for k, v in permuted.to_state_dict().items() if not torch.equal(v, double.to_state_dict()[k])]
        # Hidden units of every block move (only input- and output-side tensors may stay).
        assert len(moved) >= len(state) // 2, (name, len(moved), len(state))
        assert any(group.size > 1 for group in permuted.symmetries)
        twin = copy.deepcopy(module).double()
        twin.load_state_dict(permuted.to_state_dict(), strict=True)
        torch.testing.assert_close(_outputs(twin, example), reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("name", "factory"), families.MORE_WIRINGS, ids=[n for n, _ in families.MORE_WIRINGS])
def test_sne_and_deepsets_encode_other_wirings(name, factory):
    from sne.encoders import build_encoder

    module, example = factory()
    record = record_from_module(module, example)
    twin = random_equivalent_permutation(record, torch.Generator().manual_seed(0))
    for encoder_name in ("sne", "deepsets"):
        encoder = build_encoder(encoder_name, hidden=16) if encoder_name == "sne" else build_encoder(encoder_name)
        codes = encoder.eval()(encoder.prepare([record, twin]))
        assert codes.shape[0] == 2 and torch.isfinite(codes).all()


def test_symmetries_of_a_transformer_include_heads_residual_stream_and_mlp():
    module, example = families.vit(dim=24, heads=3, depth=2)
    names = [group.name for group in symmetry_groups(record_from_module(module, example))]
    assert any(name.startswith("heads of 'encoder.layers.0.self_attn'") for name in names)
    assert any("query/key dimensions of head 2" in name for name in names)
    assert any("value dimensions of head 0" in name for name in names)
    assert any("linear1" in name for name in names)
    assert any("patch_embed" in name for name in names)  # the residual stream, fed by the patch embedding
    residual = next(g for g in symmetry_groups(record_from_module(module, example)) if "patch_embed" in g.name)
    touched = {m.tensor for m in residual.members}
    assert {"cls_token", "pos_embed", "in_proj_weight", "out_proj.weight", "weight", "bias"} <= touched


def test_hand_written_attention_around_a_fused_qkv_has_its_heads():
    module, example = families.gpt(heads=4)
    groups = symmetry_groups(record_from_module(module, example))
    heads = [g for g in groups if g.name.startswith("heads of the attention into 'blocks.0.attn.proj'")]
    assert len(heads) == 1 and heads[0].size == 4
    assert {(m.tensor, m.axis, m.offset) for m in heads[0].members} == {
        ("weight", 0, 0), ("weight", 0, 16), ("weight", 0, 32), ("bias", 0, 0), ("bias", 0, 16), ("bias", 0, 32),
        ("weight", 1, 0)}
    assert sum("query/key dimensions" in g.name for g in groups) == 4 * 2  # 4 heads, 2 blocks


def test_residual_and_concatenation_flow():
    module, example = families.resnet()
    record = record_from_module(module, example)
    index = {layer.name: i for i, layer in enumerate(record.layers)}
    # The second block reads the sum of the first block's output and its shortcut.
    conv = record.layers[index["layer2.0.conv1"]]
    assert len(conv.inputs) == 1 and len(conv.inputs[0].sources) == 2
    assert record.layers[index["fc"]].activation == "identity"
    unet, example = families.unet()
    record = record_from_module(unet, example)
    concatenating = [layer for layer in record.layers if layer.inputs and len(layer.inputs) == 2]
    assert concatenating and all(layer.kind == "conv2d" for layer in concatenating)
    assert any(layer.kind == "conv_transpose2d" for layer in record.layers)


def test_recurrent_layers_are_refused_in_one_line():
    module, example = families.lstm_model()
    with pytest.raises(SneError, match=r"^<\w+>: recurrent layer 'lstm' \(LSTM\) is not supported") as info:
        record_from_module(module, example)
    assert "\n" not in str(info.value)
    # Its bare state_dict, without --arch, says the same.
    with pytest.raises(SneError, match=r"^lstm\.pt: recurrent layer 'lstm' \(LSTM, GRU or RNN"):
        record_from_state_dict(module.state_dict(), source="lstm.pt")


FACTORY_FILE = """
import sys
sys.path.insert(0, {tests!r})
import network_families

def held_out():
    return network_families.HELD_OUT_VARIANTS[{index}][1]()

def lstm():
    return network_families.lstm_model()

def no_input():
    return network_families.resnet()[0]
"""


@pytest.fixture(scope="module")
def tiny_run(tiny_sne_run) -> Path:
    return tiny_sne_run


@pytest.mark.parametrize("index", [0, 2, 5, 7, 9])
def test_cli_embeds_and_predicts_held_out_networks(tiny_run, tmp_path, capsys, index):
    factory = tmp_path / "arch.py"
    factory.write_text(FACTORY_FILE.format(tests=str(TESTS), index=index))
    module, _ = families.HELD_OUT_VARIANTS[index][1]()
    files = []
    for seed, suffix in ((0, ".safetensors"), (1, ".pt")):
        torch.manual_seed(seed)
        for parameter in module.parameters():
            parameter.data.normal_(0, 0.1)
        path = tmp_path / f"net{seed}{suffix}"
        save_state_dict_file(module.state_dict(), path)
        files.append(str(path))
    arch = f"{factory}:held_out"
    code, _, err = run_cli(["embed", str(tiny_run), *files, "--arch", arch, "--out", str(tmp_path / "z.npy"),
                            "--device", "cpu"], capsys)
    assert code == 0, err
    codes = np.load(tmp_path / "z.npy")
    # Two different networks, two different codes (an untrained-looking SNE squeezes them close: only inequality).
    assert codes.shape == (2, 8) and np.isfinite(codes).all() and not np.array_equal(codes[0], codes[1])
    code, out, err = run_cli(["predict", str(tiny_run), *files, "--arch", arch, "--device", "cpu"], capsys)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2


def test_cli_refusals_are_one_line(tiny_run, tmp_path, capsys):
    factory = tmp_path / "arch.py"
    factory.write_text(FACTORY_FILE.format(tests=str(TESTS), index=0))
    lstm, _ = families.lstm_model()
    save_state_dict_file(lstm.state_dict(), tmp_path / "lstm.pt")
    code, out, err = run_cli(["predict", str(tiny_run), str(tmp_path / "lstm.pt"), "--arch", f"{factory}:lstm"], capsys)
    assert code == 2 and "recurrent layer 'lstm' (LSTM)" in out + err and len((out + err).strip().splitlines()) == 1
    # A file of another architecture than --arch names the first key that does not fit.
    resnet, _ = families.resnet()
    save_state_dict_file(resnet.state_dict(), tmp_path / "resnet.pt")
    code, out, err = run_cli(["predict", str(tiny_run), str(tmp_path / "resnet.pt"), "--arch", f"{factory}:held_out"],
                             capsys)
    assert code == 2 and "does not fit architecture" in out + err
    # Without --arch, a ResNet's state_dict is ambiguous (a branch) and says to pass one.
    code, out, err = run_cli(["predict", str(tiny_run), str(tmp_path / "resnet.pt")], capsys)
    assert code == 2 and "--arch" in out + err
    for bad in ("nofile.py:f", f"{factory}:missing", "no_colon", f"{factory}:held_out x"):
        code, out, err = run_cli(["embed", str(tiny_run), str(tmp_path / "resnet.pt"), "--arch", bad,
                                  "--out", str(tmp_path / "z.npy")], capsys)
        assert code == 2 and len((out + err).strip().splitlines()) == 1, (bad, out, err)
    assert not (tmp_path / "z.npy").exists()


def test_checkpoints_of_wrapped_modules_fit_their_architecture(tmp_path):
    """Keys saved through DistributedDataParallel (``module.``), torch.compile (``_orig_mod.``) or a
    Lightning module (``model.``) read as the bare module's; a prefix that is part of no wrapper's
    job (the keys do not fit once peeled) is still refused."""
    module, example = families.resnet()
    arch = Arch(module, example)
    state = module.state_dict()
    reference = arch.record(state, "bare").to_state_dict()
    for prefix in ("module.", "module._orig_mod.", "model."):
        record = arch.record({prefix + key: value for key, value in state.items()}, prefix)
        assert record.to_state_dict().keys() == reference.keys()
        assert all(torch.equal(record.to_state_dict()[k], reference[k]) for k in reference)
    with pytest.raises(SneError, match=r"^other: does not fit architecture .*missing key"):
        arch.record({"backbone." + key: value for key, value in list(state.items())[1:]}, "other")
    # A training checkpoint that keeps the weights under 'model' (torchvision's reference scripts).
    torch.save({"model": {"module." + key: value for key, value in state.items()}, "epoch": 3}, tmp_path / "c.pt")
    assert load_record(tmp_path / "c.pt", arch).to_state_dict().keys() == reference.keys()


def test_a_factory_without_example_input_guesses_one(tmp_path):
    factory = tmp_path / "arch.py"
    factory.write_text(FACTORY_FILE.format(tests=str(TESTS), index=0))
    arch = arch_from_spec(f"{factory}:no_input")  # a ResNet on 3x32x32 images
    resnet, _ = families.resnet()
    record = arch.record(resnet.state_dict(), source="r.pt")
    assert {l.kind for l in record.layers} >= {"conv2d", "batch_norm", "linear"}


@pytest.mark.skipif(shutil.which("sne") is None and not (Path(sys.executable).parent / "sne").exists(),
                    reason="the console script is not installed")
def test_installed_console_script_reads_an_arch(tiny_run, tmp_path):
    factory = tmp_path / "arch.py"
    factory.write_text(FACTORY_FILE.format(tests=str(TESTS), index=3))
    module, _ = families.HELD_OUT_VARIANTS[3][1]()
    save_state_dict_file(module.state_dict(), tmp_path / "v.safetensors")
    script = str(Path(sys.executable).parent / "sne")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([script, "predict", str(tiny_run), str(tmp_path / "v.safetensors"), "--arch",
                           f"{factory}:held_out", "--device", "cpu"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "frequency" in done.stdout
    done = subprocess.run([script, "predict", str(tiny_run)], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout


def test_load_record_with_arch_matches_the_module(tmp_path):
    module, example = families.mobilenet()
    path = tmp_path / "m.safetensors"
    save_state_dict_file(module.state_dict(), path)
    factory = tmp_path / "arch.py"
    factory.write_text("import sys\nsys.path.insert(0, %r)\nimport network_families\n"
                       "def build():\n    return network_families.mobilenet()\n" % str(TESTS))
    record = load_record(path, arch_from_spec(f"{factory}:build"))
    direct = record_from_module(module, example)
    assert [l.name for l in record.layers] == [l.name for l in direct.layers]
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(record.layers, direct.layers))
    assert record.symmetries == direct.symmetries


def test_hugging_face_config_beside_a_checkpoint(tiny_run, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")  # part of the test extra; optional for users
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    config.save_pretrained(tmp_path)
    model = transformers.AutoModel.from_config(config).eval()
    save_state_dict_file(model.state_dict(), tmp_path / "model.safetensors")
    code, _, err = run_cli(["embed", str(tiny_run), str(tmp_path / "model.safetensors"), "--out",
                            str(tmp_path / "z.npy"), "--device", "cpu"], capsys)
    assert code == 0, err
    assert np.isfinite(np.load(tmp_path / "z.npy")).all()
    # The traced BERT keeps its function under its own symmetries (the output, the residual stream, stays).
    from sne.weights.arch import arch_from_hf_config

    record = arch_from_hf_config(tmp_path / "config.json").record(model.state_dict(), "bert").to(torch.float64)
    names = {group.name.split(" of ")[0] for group in record.symmetries}
    assert {"heads", "query/key dimensions", "value dimensions"} <= names  # its hand-written attention
    tokens = torch.randint(0, 40, (1, 8))
    twin = copy.deepcopy(model).double()
    with torch.no_grad():
        reference = twin(input_ids=tokens).last_hidden_state
        twin.load_state_dict(random_equivalent_permutation(record, torch.Generator().manual_seed(0)).to_state_dict())
        torch.testing.assert_close(twin(input_ids=tokens).last_hidden_state, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["mlp", "mlp_canonical", "hyperrep", "nfn_np", "nfn_hnp", "nft", "dwsnet"])
def test_fixed_architecture_encoders_refuse_other_kinds_in_one_line(name):
    from sne.encoders import build_encoder

    chain = record_from_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)))
    module, example = families.resnet()
    resnet = record_from_module(module, example, source="resnet.pt")
    encoder = build_encoder(name, architecture=chain.architecture)
    with pytest.raises(SneError) as info:
        encoder.check_records([resnet])
        encoder.prepare([resnet])
    message = str(info.value)
    assert message.startswith("resnet.pt: ") and "\n" not in message
    assert "cannot read layer 'bn1' (batch_norm)" in message or "layer 'conv1'" in message, message


class _OwnConv(nn.Module):
    """A convolution written by hand around parameters of one's own."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1)


class _OwnLinear(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(outputs, inputs) * 0.3)
        self.b = nn.Parameter(torch.randn(outputs) * 0.1)

    def forward(self, x):
        return x @ self.w.t() + self.b


class _OwnModules(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc, self.out = _OwnConv(3, 6), _OwnConv(6, 6), _OwnLinear(6, 4), nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x)) + x
        return self.out(torch.tanh(self.fc(x.mean((2, 3)))))


def test_layers_written_by_hand_are_read_by_what_they_compute():
    module, example = _OwnModules().eval(), torch.randn(2, 3, 8, 8)
    record = record_from_module(module, example)
    assert [layer.kind for layer in record.layers] == ["conv2d", "conv2d", "parameter", "linear"]
    names = {group.name for group in record.symmetries}
    assert names == {"outputs of 'c2'", "outputs of 'fc'"}  # c1's outputs join c2's through the residual
    twin = copy.deepcopy(module).double()
    reference = _outputs(module, example)
    twin.load_state_dict(random_equivalent_permutation(record.to(torch.float64), torch.Generator()).to_state_dict())
    torch.testing.assert_close(_outputs(twin, example), reference, rtol=1e-9, atol=1e-9)
