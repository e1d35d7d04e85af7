"""SNE at scale: the windowed part stage, encoding run by run, and micro-batches that change nothing."""

from __future__ import annotations

import pytest
import torch

from sne.encoders import batch_to
from sne.encoders.chunking import first_element, pad_chunk, part_chunks, plan_chunks, row_chunk_layout
from sne.encoders.sne import SNEEncoder
from network_families import resnet, vit
from sne.weights import record_from_module
from test_sne_encoder import SMALL, mixed_records, mlp

#: Every records' parts have at most 16 chunks of 8 here (an MLP row of 32 is 4 chunks, 32 rows: 128).
WIDE = {"chunk_size": 8}


def codes(encoder: SNEEncoder, batch) -> torch.Tensor:
    return encoder.eval()(batch)


def with_weights_of(encoder: SNEEncoder, **options) -> SNEEncoder:
    twin = SNEEncoder(**{**encoder.options, **options}).double()
    twin.load_state_dict(encoder.state_dict())
    return twin


@pytest.mark.parametrize("layout", [(5, 3, 8), (4, 40, 8), (7, 8, 8), (1, 1, 32), (33, 4, 32)])
def test_chunk_runs_are_contiguous_element_runs(layout):
    rows, row_length, chunk_size = layout
    whole = row_chunk_layout(rows, row_length, chunk_size)
    chunks = part_chunks(rows, row_length, chunk_size)
    assert chunks == int(whole.slot.max()) // chunk_size + 1
    for begin in range(chunks + 1):
        start = first_element(begin, rows, row_length, chunk_size)
        # Exactly the elements whose slot lies in chunk `begin` or later.
        assert start == int((whole.slot < begin * chunk_size).sum())
        piece = row_chunk_layout(rows, row_length, chunk_size, start, first_element(chunks, rows, row_length, chunk_size))
        assert torch.equal(piece.slot, whole.slot[start:]) and torch.equal(piece.row_slot, whole.row_slot[start:])


@pytest.mark.parametrize("options", [{}, {"use_source_features": True, "use_input_positions": True}])
def test_a_plan_gives_the_batch_run_by_run(options):
    records = mixed_records(torch.float64)
    kwargs = dict(chunk_size=8, dtype=torch.float64, standardize=True,
                  source_features=bool(options), input_positions=bool(options), own_features=bool(options))
    eager = pad_chunk(records, **kwargs)
    plan = plan_chunks(records, **kwargs)
    for first, last in [(0, plan.num_chunks), (3, 17), (plan.num_chunks - 1, plan.num_chunks)]:
        made, sliced = plan.elements(first, last), eager.elements(first, last)
        for name in ("tap_values", "element_slot", "source_features", "input_positions", "own_features",
                     "tap_coordinates"):
            a, b = getattr(made, name), getattr(sliced, name)
            assert (a is None) == (b is None), name
            for x, y in zip(a or [], b or []):
                assert torch.equal(x, y), name
        assert torch.equal(made.element_mask, sliced.element_mask) and torch.equal(made.row_slot, sliced.row_slot)


@pytest.mark.parametrize("options", [{}, {"use_source_features": True, "use_input_positions": True,
                                          "use_own_neuron_features": True},
                                     {"chunk_hidden": 8}, {"batch_norm": False}, {"pool_statistics": False}])
def test_streaming_inference_gives_the_codes_of_one_batch(options):
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, **WIDE, **options).double()
    records = mixed_records(torch.float64)
    one_batch = encoder.train()(encoder.prepare(records))  # fills running statistics with something
    del one_batch
    with torch.no_grad():  # and batch norms' affine maps, which start as the identity
        for norm in encoder.modules():
            if isinstance(norm, torch.nn.BatchNorm1d):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_()
    expected = codes(encoder, encoder.prepare(records))
    with torch.no_grad():
        streamed = codes(encoder, batch_to(encoder.plan(records), "cpu"))
    torch.testing.assert_close(streamed, expected, atol=1e-12, rtol=0)


def test_the_window_stage_is_the_papers_where_no_part_is_longer_than_a_window():
    torch.manual_seed(0)
    paper = SNEEncoder(**SMALL, **WIDE, part_window=None).double()
    windowed = with_weights_of(paper, part_window=128)
    records = mixed_records(torch.float64)
    assert int(paper.prepare(records).part_mask.shape[1]) <= 128
    for mode in ("train", "eval"):
        outputs = [getattr(encoder, mode)()(encoder.prepare(records)) for encoder in (paper, windowed)]
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-12, rtol=0)


def test_windows_of_windows_keep_codes_independent_of_the_batch():
    """Parts of 128 chunks in windows of 3: five levels of windows, and a network's code is still
    its own, alone or beside others."""
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, **WIDE, part_window=3).double()
    records = mixed_records(torch.float64)
    g = torch.Generator().manual_seed(1)
    large = mlp([5, 70, 70, 3], g, dtype=torch.float64)
    together = codes(encoder, encoder.prepare([large, *records]))
    for i, record in enumerate([large, *records]):
        torch.testing.assert_close(together[i], codes(encoder, encoder.prepare([record]))[0], atol=1e-10, rtol=0)
    paper = with_weights_of(encoder, part_window=None)
    assert not torch.allclose(codes(paper, paper.prepare([large])), codes(encoder, encoder.prepare([large])))


def test_window_levels_get_gradients():
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, **WIDE, part_window=2)
    encoder.train()(encoder.prepare(mixed_records())).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in encoder.named_parameters()
               if n.startswith("part_"))


@pytest.mark.parametrize("options", [{}, {"chunk_hidden": 8}, {"use_source_features": True}])
def test_micro_batches_in_training_change_no_code_gradient_or_running_statistic(options):
    """Training mode: batch normalisation sees all chunks at once, and checkpoint recomputation
    does not update running statistics twice."""
    torch.manual_seed(0)
    plain = SNEEncoder(**SMALL, **WIDE, **options).double()
    micro = with_weights_of(plain, chunk_micro_batch=5)
    records = mixed_records(torch.float64)
    outputs = []
    for encoder in (plain, micro):
        z = encoder.train()(encoder.prepare(records))
        z.square().sum().backward()
        outputs.append(z)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-10, rtol=0)
    for (name, a), b in zip(plain.named_parameters(), micro.parameters()):
        if a.grad is None:
            assert b.grad is None, name
        else:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-9, rtol=1e-9, msg=name)
    for (name, a), b in zip(plain.named_buffers(), micro.buffers()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=name)


def test_a_narrow_chunk_stage_reads_any_network_and_decodes_weights():
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, chunk_hidden=4)
    records = [record_from_module(*build()) for build in (resnet, vit)] + mixed_records()
    z = encoder.train()(encoder.prepare(records))
    assert z.shape == (len(records), SMALL["out_dim"]) and torch.isfinite(z).all()
    encoder.make_weight_head()
    chains = mixed_records()
    outputs = encoder.forward_weights(encoder.prepare_weights(chains))
    assert [o.signature for o in outputs] == [r.signature for r in chains]


def test_sne_trains_under_bfloat16_autocast():
    """What --precision bfloat16 runs on a GPU, exercised on the CPU's autocast: no dtype mismatch
    between bfloat16 activations and float32 encodings, finite codes and gradients."""
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, **WIDE, part_window=3)
    batch = encoder.prepare(mixed_records())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = encoder.train()(batch)
    z.float().square().sum().backward()
    assert torch.isfinite(z).all()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_bfloat16_training_on_a_cpu_is_refused_in_one_line(shared_sine_zoo, tmp_path, capsys):
    from conftest import run_cli

    code, out, err = run_cli(["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--out",
                              str(tmp_path / "run"), "--device", "cpu", "--precision", "bfloat16"], capsys)
    assert code == 2 and "bfloat16" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    code, out, err = run_cli(["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--out",
                              str(tmp_path / "run"), "--device", "cpu", "--precision", "half"], capsys)
    assert code == 2 and "unknown precision 'half'" in err


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_runs_of_chunks_and_windows_change_nothing(monkeypatch, mode):
    import sne.encoders.sne as sne_module

    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, **WIDE, part_window=3).double()
    batch = encoder.prepare(mixed_records(torch.float64))
    whole = getattr(encoder, mode)()(batch)
    for name in ("WINDOW_RUN", "TRAINING_CHUNKS", "INFERENCE_CHUNKS"):
        monkeypatch.setattr(sne_module, name, 2)
    twin = with_weights_of(encoder)
    torch.testing.assert_close(getattr(twin, mode)()(batch), whole, atol=1e-12, rtol=0)


def test_embed_with_a_micro_batch_gives_the_same_codes(tiny_sne_run, tmp_path, capsys):
    import numpy as np
    from torch import nn

    from conftest import run_cli
    from sne.weights.io import save_state_dict_file

    torch.manual_seed(0)
    save_state_dict_file(nn.Sequential(nn.Linear(1, 32), nn.Linear(32, 32), nn.Linear(32, 1)).state_dict(),
                         tmp_path / "inr.safetensors")
    codes = {}
    for label, extra in (("default", []), ("micro", ["--micro-batch", "1"])):
        code, _, err = run_cli(["embed", str(tiny_sne_run), str(tmp_path / "inr.safetensors"), "--device", "cpu",
                                "--out", str(tmp_path / f"{label}.npy"), *extra], capsys)
        assert code == 0, err
        codes[label] = np.load(tmp_path / f"{label}.npy")
    np.testing.assert_allclose(codes["micro"], codes["default"], rtol=1e-5, atol=1e-6)
    code, _, err = run_cli(["embed", str(tiny_sne_run), str(tmp_path / "inr.safetensors"), "--out",
                            str(tmp_path / "x.npy"), "--micro-batch", "0"], capsys)
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize("recipe", ["sine-inr", "digit-inr", "small-cnn", "cnn-s"])
def test_the_zoos_behind_the_tables_have_no_part_longer_than_a_window(recipe):
    """Where no part has more than part_window chunks, the windowed stage is the paper's function
    (tested above): the INR and CNN tables in docs/RESULTS.md then hold for today's default as they are."""
    from sne.encoders.sne import DEFAULT_OPTIONS
    from sne.zoo import get_recipe
    from sne.weights.record import NetworkRecord, make_layer

    maker = get_recipe(recipe)
    layers = maker.architecture(maker.resolve_options({}))
    record = NetworkRecord(tuple(
        make_layer(layer["name"], layer["level"], torch.zeros(layer["weight_shape"]),
                   torch.zeros(layer["weight_shape"][0]) if layer["has_bias"] else None)
        for layer in layers))
    longest = pad_chunk([record], DEFAULT_OPTIONS["chunk_size"]).part_mask.shape[1]
    assert longest <= DEFAULT_OPTIONS["part_window"]


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux /proc/self/maps), else None."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return fields[5] if len(fields) > 5 else None
    return None


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs /proc/self/maps (Linux)")
def test_a_safetensors_checkpoint_is_encoded_from_the_mapped_file_not_from_copies(tmp_path):
    """Weights stay where safetensors maps them (pages read as the encoder reaches them) through
    the record and SNE's plan: no float64 or other copy of the network is made up front."""
    from torch import nn

    from sne.weights import load_record, save_state_dict_file

    path = tmp_path / "net.safetensors"
    save_state_dict_file(nn.Sequential(nn.Linear(64, 300), nn.Tanh(), nn.Linear(300, 10)).state_dict(), path)
    plan = SNEEncoder(**SMALL).plan([load_record(path)])
    assert len(plan.parts) == 4
    for placed in plan.parts:
        assert _mapped_file(placed.part.taps.data_ptr()) == str(path.resolve())


@pytest.mark.parametrize("unbiased", [False, True])
def test_large_parts_are_standardised_block_by_block_as_at_once(monkeypatch, unbiased):
    from sne.encoders import common

    values = torch.randn(1000, 37, generator=torch.Generator().manual_seed(0)) * 5 + 3
    at_once = common.mean_std(values, unbiased=unbiased)
    monkeypatch.setattr(common, "BLOCKWISE_ELEMENTS", 999)
    blocks = common.mean_std(values, unbiased=unbiased)
    torch.testing.assert_close(blocks, at_once, atol=1e-12, rtol=0)
    assert common.mean_std(torch.full((5000,), 2.0))[1] == common.STD_FLOOR
