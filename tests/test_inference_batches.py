"""Inference batches are bounded by network count and by parameters, and change no prediction."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sne.train import predictor as predictor_module
from sne.train.predictor import inference_batches


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), max_size=40), batch_size=st.integers(1, 8), budget=st.integers(1, 120))
def test_batches_cover_every_network_in_order_within_both_bounds(sizes, batch_size, budget):
    records = [SimpleNamespace(num_parameters=n) for n in sizes]
    slices = inference_batches(records, batch_size, budget)
    assert [i for part in slices for i in range(len(records))[part]] == list(range(len(records)))
    for part in slices:
        members = sizes[part]
        assert 1 <= len(members) <= batch_size
        # Over the budget only where one network alone is.
        assert sum(members) <= budget or len(members) == 1
    # Each batch but the last is full: adding the next network would break a bound.
    for part, following in zip(slices, slices[1:]):
        assert len(sizes[part]) == batch_size or sum(sizes[part]) + sizes[following.start] > budget


def test_predictions_do_not_depend_on_the_parameter_budget(tiny_sne_run, shared_sine_zoo, monkeypatch):
    from sne.train.run import load_run

    run = load_run(tiny_sne_run, device="cpu")
    records = shared_sine_zoo.records(shared_sine_zoo.split_ids("test"))
    whole = run.predictor.predict(records)
    size = records[0].num_parameters
    monkeypatch.setattr(predictor_module, "INFERENCE_PARAMETERS", 3 * size)
    calls = []
    real = run.predictor.encoder.prepare_inference
    monkeypatch.setattr(run.predictor.encoder, "prepare_inference", lambda rs: calls.append(len(rs)) or real(rs))
    torch.testing.assert_close(torch.from_numpy(run.predictor.predict(records)), torch.from_numpy(whole))
    assert max(calls) == 3 and sum(calls) == len(records)
