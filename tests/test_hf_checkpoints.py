"""Hugging Face checkpoints as ``save_pretrained`` writes them, read through the config.json beside
them: the class the config names (its keys carry the head's prefix), a tied tensor saved once, keys
in the saved format where it differs from the module's (ViT), and a file that does not fit refused
in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_cli
from sne.errors import SneError
from sne.weights.arch import network_reader
from sne.weights.trace import record_from_module

transformers = pytest.importorskip("transformers")  # part of the test extra; optional for users


def _saved(model, directory):
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    model.save_pretrained(directory)
    return directory / "model.safetensors"


def _same(record, reference) -> None:
    assert [layer.name for layer in record.layers] == [layer.name for layer in reference.layers]
    for a, b in zip(record.layers, reference.layers):
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.tensors[name], b.tensors[name]) for name in a.tensors)


def test_gpt2_lm_head_with_its_tied_embedding_saved_once(tmp_path):
    config = transformers.GPT2Config(vocab_size=30, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    path = _saved(model, tmp_path)
    assert "lm_head.weight" not in load_file(path) and "lm_head.weight" in model.state_dict()
    record = network_reader()(path)
    _same(record, record_from_module(model, torch.randint(0, 30, (1, 8))))


def test_vit_saved_under_older_module_paths(tmp_path):
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, num_labels=3)
    model = transformers.ViTForImageClassification(config).eval()
    path = _saved(model, tmp_path)
    saved = load_file(path)
    assert set(saved) != set(model.state_dict())  # the format this test is about
    record = network_reader()(path)
    _same(record, record_from_module(model, torch.randn(1, 1, 8, 8)))
    # A file with a tensor missing is refused, naming the file, not filled with fresh values.
    del saved[next(k for k in saved if "attention" in k)]
    broken = tmp_path / "broken.safetensors"
    save_file(saved, broken)
    with pytest.raises(SneError) as info:
        network_reader()(broken)
    message = str(info.value)
    assert message.startswith(str(broken)) and "\n" not in message and "missing" in message


def test_cli_predicts_on_hugging_face_checkpoints(tiny_sne_run, tmp_path, capsys):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=30, n_positions=8, n_embd=16,
                                                                n_layer=1, n_head=2))
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32))
    files = [_saved(gpt2, tmp_path / "gpt2"), _saved(vit, tmp_path / "vit")]
    code, out, err = run_cli(["embed", str(tiny_sne_run), *map(str, files), "--out", str(tmp_path / "z.npy"),
                              "--device", "cpu"], capsys)
    assert code == 0, err
    codes = np.load(tmp_path / "z.npy")
    assert codes.shape[0] == 2 and np.isfinite(codes).all()


def test_a_model_directory_single_or_sharded_reads_as_its_weights_file(tiny_sne_run, tmp_path, capsys):
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=30, n_positions=8, n_embd=16,
                                                                 n_layer=2, n_head=2)).eval()
    single = _saved(model, tmp_path / "single").parent
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").is_file()
    read = network_reader()
    _same(read(sharded), read(single / "model.safetensors"))
    _same(read(single), read(single / "model.safetensors"))
    code, out, err = run_cli(["predict", str(tiny_sne_run), str(single), str(sharded), "--device", "cpu"], capsys)
    assert code == 0, err
    first, second = (line.split("\t") for line in out.strip().splitlines())
    assert first[0] == str(single) and second[0] == str(sharded) and first[1:] == second[1:]
    # A shard gone, or no weights at all: one line naming what is missing, exit code 2.
    shards[-1].unlink()
    (tmp_path / "empty").mkdir()
    for broken, needle in ((sharded, shards[-1].name), (tmp_path / "empty", "a directory without model.safetensors")):
        code, out, err = run_cli(["predict", str(tiny_sne_run), str(broken), "--device", "cpu"], capsys)
        message = (out + err).strip()
        assert code == 2 and needle in message and len(message.splitlines()) == 1, message


def test_a_folder_of_model_directories_imports_as_a_zoo(tmp_path, capsys):
    """Each listed directory is one network (its shards and config.json are its own, not unlisted
    checkpoints); the zoo's records are what reading each directory gives; a listed directory
    without weights is refused in one line, and nothing is written."""
    config = transformers.GPT2Config(vocab_size=30, n_positions=8, n_embd=16, n_layer=2, n_head=2)
    root = tmp_path / "models"
    names = ["a", "b", "c"]
    for i, name in enumerate(names):
        torch.manual_seed(i)
        model = transformers.GPT2LMHeadModel(config).eval()
        model.save_pretrained(root / name, **({"max_shard_size": "20KB"} if name == "b" else {}))
    assert (root / "b" / "model.safetensors.index.json").is_file()
    table = tmp_path / "targets.csv"
    table.write_text("file,score\n" + "".join(f"{name},{0.1 * (i + 1)}\n" for i, name in enumerate(names)))
    code, out, err = run_cli(["zoo", "import", "folder", str(root), "--targets", str(table),
                              "--out", str(tmp_path / "zoo")], capsys)
    assert code == 0, err
    from sne.zoo import Zoo
    zoo = Zoo.open(tmp_path / "zoo")
    read = network_reader()
    order = list(zoo.metadata["file"])
    assert sorted(order) == names
    for name, record in zip(order, zoo.records(zoo.metadata["id"].to_numpy())):
        _same(record, read(root / name))

    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no weights here")
    table.write_text(table.read_text() + "empty,0.5\n")
    code, out, err = run_cli(["zoo", "import", "folder", str(root), "--targets", str(table),
                              "--out", str(tmp_path / "zoo2")], capsys)
    message = (out + err).strip()
    assert code == 2 and "a directory without model.safetensors" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "zoo2").exists()
