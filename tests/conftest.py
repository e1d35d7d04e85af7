import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# GUIDE section 8: two OpenMP threads spin-wait and make timings swing; tests run on one thread.
torch.set_num_threads(1)


import sys  # noqa: E402

import pytest  # noqa: E402


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the real ``sne`` entry point in-process; return (exit code, stdout, stderr)."""
    from sne.cli import main

    old_argv = sys.argv
    sys.argv = ["sne", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def shared_sine_zoo(tmp_path_factory):
    """200 shared-init sine INRs (seed 3, 150 steps): the frequency is readable from the weights,
    so any working encoder beats the mean predictor within a few epochs. Shared by all test files."""
    from sne.zoo import generate_zoo

    out = tmp_path_factory.mktemp("zoo") / "shared"
    return generate_zoo("sine-inr", out, n=200, seed=3, options={"init": "shared", "steps": 150}, command="test",
                        progress=False)


@pytest.fixture(scope="session")
def tiny_sne_run(shared_sine_zoo, tmp_path_factory):
    """A 1-epoch small SNE run on the shared sine zoo: a run directory for the CLI's predict and embed
    (SNE reads networks of any architecture, so any checkpoint can be fed to it)."""
    from sne.train import TrainConfig, fit

    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder="sne",
                         encoder_options={"hidden": 16, "heads": 2, "out_dim": 8}, epochs=1, batch_size=32,
                         head_hidden=[16], seed=0, device="cpu", invariance_weight=0.0)
    out = tmp_path_factory.mktemp("tiny-sne") / "run"
    fit(config, out, progress=False)
    return out


def fit_killed_in_second_epoch(config, out, monkeypatch) -> None:
    """Run ``fit`` until a KeyboardInterrupt (a kill) lands in its second epoch's validation."""
    from sne.train import fit
    from sne.train import run as run_module

    real_validation = run_module._validation
    calls = {"n": 0}

    def killed_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validation(*args, **kwargs)

    monkeypatch.setattr(run_module, "_validation", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(config, out, progress=False)
    monkeypatch.setattr(run_module, "_validation", real_validation)


def trained_at_defaults(encoder: str, options: dict | None = None) -> dict:
    """The training settings a results row records for a run of ``encoder`` (with ``options``) trained
    at its defaults: augmentation and every setting that names a configuration apart from them."""
    from sne.bench.runs import TUNED_TRAINING
    from sne.train.run import TrainConfig

    config = TrainConfig.for_encoder(encoder, zoo="", target="", encoder_options=options or {})
    return {name: getattr(config, name) for name in ("permutation_augment", *TUNED_TRAINING)}


def sine_run_and_bare_files(zoo, out, encoder_options: dict, count: int):
    """A one-epoch SNE run on sine-INR ``zoo`` (in ``out/run``), and ``count`` of its test networks
    saved as bare state_dicts (``out/net<i>.pt``, which name no activations): (run, records, files)."""
    from sne.train import TrainConfig, fit

    config = TrainConfig(zoo=str(zoo.path), target="frequency", encoder="sne", encoder_options=encoder_options,
                         epochs=1, batch_size=32, head_hidden=[16], seed=0, device="cpu")
    run = out / "run"
    fit(config, run, progress=False)
    records = zoo.records(zoo.split_ids("test")[:count])
    files = [out / f"net{i}.pt" for i in range(count)]
    for record, path in zip(records, files):
        torch.save(dict(record.to_state_dict()), path)
    return run, records, files
