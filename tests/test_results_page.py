"""docs/RESULTS.md is generated from results/*.json: it must match what the generator writes now."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def page():
    spec = importlib.util.spec_from_file_location("make_results_md", ROOT / "scripts" / "make_results_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_is_regenerated_from_the_result_files():
    assert (ROOT / "docs" / "RESULTS.md").read_text() == page().render(), "run `make results` and commit"


def _transfer_row(encoder, options, seed, taus):
    return {"encoder": encoder, "encoder_options_given": options, "seed": seed, "train_zoo": "home",
            "encoder_parameters": 1000, "train_seconds": 60.0, "hardware": {"device": "cpu", "threads": 1},
            "evaluations": {zoo: {"kendall_tau": tau, "normalized_mse": 1 - tau} for zoo, tau in taus.items()}}


def test_a_study_with_one_training_zoo_is_one_table_with_the_drop_from_home():
    zoos = [{"label": label} for label in ("home", "shifted", "far")]
    entries = [_transfer_row("statnn", {}, 0, {"home": 0.6, "shifted": 0.5, "far": 0.3}),
               _transfer_row("sne", {"hidden": 16}, 0, {"home": 0.9, "shifted": 0.8, "far": 0.6}),
               _transfer_row("sne", {"hidden": 16}, 1, {"home": 0.7, "shifted": 0.6, "far": 0.4})]
    data = {"train_zoos": zoos[:1], "test_zoos": zoos, "entries": entries}
    module = page()
    mse = module._normalized_mse_cells(entries)
    lines = module._one_training_zoo_lines(data, ["home", "shifted", "far"], mse, {})
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[0].startswith("| encoder | home | shifted | far | average | drop |")
    # Best average first; cells are seed means (± std), MSE beside; drop = home - mean(other zoos).
    assert rows[1] == ("| sne (hidden=16) | 0.800 ± 0.10 (0.200) | 0.700 ± 0.10 (0.300) | 0.500 ± 0.10 (0.500) | "
                       "**0.667** | 0.200 | 1,000 | 1.000 min |")
    assert rows[2].startswith("| statnn | 0.600 (0.400) | 0.500 (0.500) | 0.300 (0.700) | **0.467** | 0.200 |")
