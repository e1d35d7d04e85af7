"""docs/RESULTS.md is generated from results/*.json: it must match what the generator writes now."""

from pathlib import Path

from conftest import trained_at_defaults
from sne.encoders.sne import SNEEncoder
from project_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def page():
    return load_script("scripts/make_results_md.py")


def test_results_page_is_regenerated_from_the_result_files():
    assert (ROOT / "docs" / "RESULTS.md").read_text() == page().render(), "run `make results` and commit"


def _at_todays_defaults(encoder, options):
    """What a row trained at today's defaults records beside the options given: for SNE, the options
    it resolved to and its training default (rows are named apart from the current defaults)."""
    if encoder != "sne":
        return {}
    return {"encoder_options_resolved": {**SNEEncoder.options_baseline(options), **options},
            **trained_at_defaults(encoder, options)}


def _transfer_row(encoder, options, seed, taus, epochs=15):
    return {"encoder": encoder, "encoder_options_given": options, "seed": seed, "train_zoo": "home",
            "encoder_parameters": 1000, "train_seconds": 60.0, "hardware": {"device": "cpu", "threads": 1}, "epochs": epochs,
            "evaluations": {zoo: {"kendall_tau": tau, "normalized_mse": 1 - tau} for zoo, tau in taus.items()},
            **_at_todays_defaults(encoder, options)}


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


def test_a_study_names_the_seeds_and_epochs_of_all_its_rows_not_its_last_command():
    entries = [_transfer_row("sne", {}, 1, {"home": 0.5}), _transfer_row("sne", {}, 0, {"home": 0.5}, epochs=5),
               _transfer_row("statnn", {}, 1, {"home": 0.5})]
    assert page()._seeds_and_epochs(entries) == "Seeds: 0, 1; epochs: 5, 15."


def test_a_published_range_orders_by_its_middle_and_says_where_ours_falls():
    entries = [_transfer_row("sne", {}, seed, {"vit": tau}) for seed, tau in ((0, 0.05), (1, 0.09))]
    entries.append(_transfer_row("deepsets", {}, 0, {"vit": -0.1}))
    numbers = {"sne": {"min": 0.33, "max": 0.46}, "deepsets": {"approximately": 0.19}}
    (line, _) = page()._transfer_ordering_lines({"entries": entries}, numbers)
    assert "here sne 0.070 > deepsets -0.100; published sne 0.330-0.460 > deepsets 0.190" in line
    assert line.endswith("the published ordering holds. Our sne is below its published range.")


def _inr_row(encoder, options, seed, nmse, weight=0.0, epochs=50):
    return {"encoder": encoder, "encoder_options_given": options, "train_seed": seed, "invariance_weight": weight,
            "epochs": epochs, "metrics": {"normalized_mse": nmse}, **_at_todays_defaults(encoder, options)}


def test_where_sne_stands_lists_each_sne_configuration_beside_the_best_other_encoder(tmp_path, monkeypatch):
    import json

    (tmp_path / "results").mkdir()
    zoo = {"recipe": "sine-inr", "options": {}, "seed": 0, "n": 10, "splits": {"train": 6, "val": 2, "test": 2}}
    inr = {"zoo": zoo, "entries": [
        _inr_row("sne", {}, 0, 0.6), _inr_row("sne", {}, 1, 0.4), _inr_row("sne", {}, 0, 0.1, weight=1.0),
        _inr_row("ng_gnn", {}, 0, 0.05), _inr_row("statnn", {}, 0, 0.7)]}
    # An ablation row apart from today's defaults in an option and in its training.
    augments = SNEEncoder.train_defaults({}).get("permutation_augment", False)
    ablation = {"zoo": zoo, "entries": [
        {**_inr_row("sne", {"use_input_positions": True}, 0, 0.2, epochs=30),
         "encoder_options_used": {"use_input_positions": True}, "train_networks": 6, "fraction": None,
         "permutation_augment": not augments},
        {**_inr_row("sne", {}, 0, 0.9, epochs=30), "encoder_options_used": {}, "train_networks": 3, "fraction": 0.5}]}
    cross = {"entries": [_transfer_row("sne", {}, 0, {"home": 0.6, "far": 0.4}),
                         _transfer_row("sne", {}, 1, {"home": 0.8, "far": 0.6}),
                         _transfer_row("deepsets", {}, 0, {"home": 0.5, "far": 0.1})]}
    # The recipe-shift study: one training zoo, so a seed's score is its row's mean over the test zoos.
    shift = {"entries": [_transfer_row("sne", {}, 0, {"home": 0.7, "far": 0.1}, epochs=30)]}
    for name, data in (("inr_frequency_independent", inr), ("ablation_invariance_independent", ablation),
                       ("cross_dataset", cross), ("recipe_shift", shift)):
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(data))
    module = page()
    monkeypatch.setattr(module, "ROOT", tmp_path)
    rows = [line for line in module.standing_section(sorted((tmp_path / "results").glob("*.json")))
            if line.startswith("| ")]
    # First the verdict per table: default SNE beside the best other encoder at its epochs.
    card, rows = rows[:4], rows[4:]
    assert card[0] == "| table | default SNE | best other encoder | standing |"
    assert card[1] == ("| INR frequency, normalised MSE, 50 ep | 0.500 ± 0.10 (2 seeds) | ng_gnn: 0.050 (1 seed) | "
                       "behind by 0.45 (the leader has one seed: no spread to be within) |")
    assert card[2] == "| cross-dataset, mean tau, 15 ep | 0.600 ± 0.10 (2 seeds) | deepsets: 0.300 (1 seed) | first |"
    assert card[3] == "| recipe shift (600 training INRs), mean tau over its test zoos, 30 ep | 0.400 (1 seed) | none at " \
        "these epochs | |"
    assert rows[0] == ("| configuration | INR frequency, normalised MSE | cross-dataset, mean tau | "
                       "recipe shift (600 training INRs), mean tau over its test zoos |")
    # Seeds averaged (CNN tables too: per seed over training zoos), the lambda-1 row and the half-data
    # row left out, epochs named.
    assert rows[1] == ("| sne | 0.500 ± 0.10 (50 ep, 2 seeds) | 0.600 ± 0.10 (15 ep, 2 seeds) | "
                       "0.400 (30 ep, 1 seed) |")
    assert rows[2].startswith(f"| sne (augment_permutations={json.dumps(not augments)}, use_input_positions=true) | "
                              "0.200 (30 ep, 1 seed) | not run | not run |")
    assert rows[3] == ("| best other encoder | ng_gnn: 0.050 (50 ep, 1 seed) | deepsets: 0.300 (15 ep, 1 seed) | "
                       "n/a |")


def test_foreign_networks_get_their_own_standing_against_the_bar(tmp_path, monkeypatch):
    import json

    (tmp_path / "results").mkdir()
    foreign = "sine-foreign-arch"
    entries = [_transfer_row("sne", {}, 0, {"home": 0.5, foreign: 0.1}),
               _transfer_row("sne", {}, 1, {"home": 0.5, foreign: 0.3}),
               _transfer_row("sne", {"probe_points": 16}, 0, {"home": 0.9, foreign: 0.94}),
               _transfer_row("sne", {"hidden": 16}, 0, {"home": 0.6, foreign: 0.5}),
               _transfer_row("ng_gnn", {}, 0, {"home": 0.7, foreign: 0.7}),
               _transfer_row("statnn", {}, 0, {"home": 0.2})]  # not tested on the foreign networks
    (tmp_path / "results" / "recipe_shift_phase_gains.json").write_text(json.dumps({"entries": entries}))
    module = page()
    monkeypatch.setattr(module, "ROOT", tmp_path)
    lines = module._foreign_lines()
    assert "at least 0.8" in lines[0]
    assert lines[-2] == ("| home (`recipe_shift_phase_gains`) | 0.200 ± 0.10 (2 seeds) | sne (probe_points=16): 0.940 "
                         "(1 seed) | ng_gnn: 0.700 (1 seed) |")
    # Three seeds outrank one luckier seed.
    entries += [_transfer_row("sne", {"probe_points": 8}, seed, {foreign: tau}) for seed, tau in enumerate((0.8, 0.9, 0.7))]
    (tmp_path / "results" / "recipe_shift_phase_gains.json").write_text(json.dumps({"entries": entries}))
    assert "| sne (probe_points=8): 0.800 ± 0.08 (3 seeds) |" in module._foreign_lines()[-2]
    (tmp_path / "results" / "recipe_shift_phase_gains.json").unlink()
    assert module._foreign_lines() == []


def test_the_verdict_is_first_within_one_std_of_the_leaders_seeds_or_the_score_that_would_be():
    verdict = page()._verdict
    assert verdict([0.70, 0.72], [0.69, 0.70], lower=False) == "first"
    assert verdict([0.05, 0.06], [0.06, 0.07], lower=True) == "first"
    # Leader 0.689 +- 0.0055 (population std over its seeds): 0.684 is within, 0.683 is not.
    leader = [0.689 - 0.0055, 0.689 + 0.0055]
    assert verdict([0.684], leader, lower=False) == "within one std of first (bar 0.6835)"
    assert verdict([0.683], leader, lower=False) == "behind by 0.006; within one std of first needs >= 0.6835"
    assert verdict([0.060], [0.044, 0.048], lower=True) == "behind by 0.014; within one std of first needs <= 0.0480"


def test_an_ablation_row_built_before_a_default_changed_says_what_it_was_built_with(monkeypatch):
    """A row's base says "defaults", and the defaults move: a row whose encoders today's code would
    build otherwise names the options it was built with; a row built as today's code builds is plain."""
    from sne.encoders import sne as sne_module

    resolved = SNEEncoder.resolved_options({})
    older = {k: v for k, v in resolved.items() if k != "use_neuron_gains"}  # recorded before the option existed
    monkeypatch.setattr(sne_module.SNEEncoder, "defaults_of_older_configs", {"use_neuron_gains": False})
    setting = {"epochs": 2, "max_train": None, "invariance_weight": 0.0, "encoder_options": {}, "train_options": {}}

    def entry(row, resolved_options):
        return {"row": row, "label": row, "encoder": "sne", "setting": setting, "encoder_options_used": {},
                "encoder_options_resolved": resolved_options, "train_seed": 0, "metrics": {"normalized_mse": 0.5},
                "hardware": {"device": "cpu", "torch": "x", "threads": 1}}

    entries = [entry("old", older), entry("new", resolved)]
    zoo = {"recipe": "sine-inr", "seed": 0, "n": 10, "splits": {"train": 6, "val": 2, "test": 2}, "command": "c"}
    data = {"study": "components", "init": "independent", "target": "frequency", "zoo": zoo, "command": "c",
            "entries": entries, "summary": [{"setting": setting, "rows": [
                {"row": r, "label": r, "encoder": "sne", "seeds": [0], "best_epochs": [1],
                 "normalized_mse": {"mean": 0.5, "std": 0.0}} for r in ("old", "new")]}]}
    module = page()
    rows = [line for line in module.ablation_section(module.ROOT / "results" / "x.json", data)
            if line.startswith("| old") or line.startswith("| new")]
    assert rows[0].startswith("| old (built with use_neuron_gains=false) | sne |")
    assert rows[1].startswith("| new | sne |")


def test_a_study_made_again_says_how_far_each_encoder_moved_and_what_its_earlier_rows_were_measured_on(tmp_path,
                                                                                                      monkeypatch):
    import json

    module = page()
    monkeypatch.setattr(module, "ROOT", tmp_path)
    (tmp_path / "results").mkdir()

    def entry(encoder, seed, taus, digests=None):
        return {"encoder": encoder, "encoder_options_given": {}, "seed": seed, "train_zoo": "a",
                "evaluations": {t: {"kendall_tau": v} for t, v in taus.items()},
                **({"zoo_digests": digests} if digests else {})}

    now = {"a": "1", "b": "2"}
    original = [entry("statnn", 0, {"a": 0.5, "b": 0.25}),  # first generation: no digests
                entry("ng_gnn", 0, {"a": 0.5, "b": 0.5}, {"a": "1", "b": "9"}),  # b was another zoo
                entry("ng_gnn", 1, {"a": 0.5}, now),
                entry("sne", 0, {"a": 0.0}, now)]
    zoos = {"train_zoos": [{"label": "a"}], "test_zoos": [{"label": "a"}, {"label": "b"}, {"label": "c"}]}
    (tmp_path / "results" / "study.json").write_text(json.dumps({"entries": original, **zoos}))
    rerun = {"entries": [entry("statnn", 0, {"a": 0.5, "b": 0.25}, now), entry("ng_gnn", 0, {"a": 0.625, "b": 0.25}, now),
                         entry("ng_gnn", 1, {"a": 0.75}, now), entry("sne", 0, {"a": 0.5}, now),
                         entry("deepsets", 0, {"a": 0.1}, now)]}
    rerun.update({"train_zoos": [{"label": "a"}], "test_zoos": [{"label": "a"}, {"label": "b"}]})
    absent, line = module.reproduced_rows("study_rerun", rerun)
    assert absent == "Of the original table's zoos, not made again here: test zoo `c`."
    assert line == ("Trained again on these zoos against the rows of `results/study.json` (same encoder, options given, "
                    "seed and training zoo): ng_gnn (rows on the same zoos) largest tau difference 0.25 over 2 cells; "
                    "ng_gnn (rows on zoos of other digests) largest tau difference 0.25 over 1 cell; statnn (rows on "
                    "the first generation, no digests recorded) largest tau difference 0 over 2 cells.")
    assert module.reproduced_rows("study", rerun) == []
    assert module.reproduced_rows("study_rerun", {"entries": [entry("sne", 0, {"a": 0.5}, now)], **zoos}) == [
        "No encoder of `results/study.json` other than SNE was trained again here."]
