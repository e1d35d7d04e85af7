"""Helpers of the benchmark scripts in benchmarks/ (their measurements run in `make bench`, not here)."""

from __future__ import annotations

from pathlib import Path

import torch

from sne.cli import format_options, parse_options
from sne.encoders.sne import SNEEncoder
from project_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str, folder: str = "benchmarks"):
    return load_script(f"{folder}/{name}.py")


def test_remeasuring_one_configuration_replaces_its_rows_in_place_and_keeps_the_others():
    merged = _script("bench_encode_scale").merged_rows
    earlier = [{"config": "sne", "size": "1e4", "seconds": 1.0}, {"config": "sne", "size": "1e5", "seconds": 2.0},
               {"config": "ng_gnn", "size": "1e4", "seconds": 3.0}]
    measured = [{"config": "sne", "size": "1e4", "seconds": 0.5}, {"config": "new", "size": "1e4", "seconds": 4.0}]
    assert merged(earlier, measured) == [measured[0], earlier[2], measured[1]]
    assert merged(earlier, []) == earlier


def test_the_earlier_sne_defaults_the_benchmarks_measure_are_those_old_configs_resolve_to():
    for name, prefix in (("bench_encode_scale", "sne-previous-default:"), ("bench_sne_train", "previous-default:")):
        configs = _script(name).DEFAULT_CONFIGS
        text = next(c for c in configs if c.startswith(prefix))[len(prefix):]
        assert parse_options(text.split(",")) == SNEEncoder.defaults_of_older_configs
    options = {"a": None, "b": True, "c": 0.5, "d": "text"}
    assert parse_options(format_options(options)) == options


def test_the_encode_scale_table_names_what_each_row_was_built_with_against_todays_defaults(monkeypatch):
    from sne.encoders import sne as sne_module

    page = _script("make_results_md", "scripts")
    today = dict(SNEEncoder().options)
    rows = [{"config": "sne", "encoder": "sne", "options_given": {}, "options_resolved": today, "size": "1e4",
             "seconds": 1.0},
            {"config": "sne", "encoder": "sne", "options_given": {}, "options_resolved": {**today, "chunk_sab": 2},
             "size": "1e5", "seconds": 2.0},
            {"config": "ng_gnn", "encoder": "ng_gnn", "options_given": {}, "size": "1e4", "seconds": 3.0}]
    data = {"command": "x", "commands": ["x"], "device": "cpu", "cpu": "a CPU", "torch": "2", "threads": 1, "omp_wait_policy": "PASSIVE",
            "load_average_before": [0, 0, 0], "load_average_after": [0, 0, 0], "method": "m", "timeout_s": 1,
            "rows": rows}
    path = ROOT / "results" / "bench_encode_scale.json"

    def cells():
        lines = page.encode_scale_section(path, data)
        return [line.split(" | ")[1] for line in lines if line.startswith("| sne |") or line.startswith("| ng_gnn |")]

    assert cells() == ["`{}`", '`{"chunk_sab": 2}`', "`{}`"]
    # A default changes: the rows measured before it say what they were built with.
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_sab", 2)
    assert cells() == ['`{"chunk_sab": 1}`', "`{}`", "`{}`"]


def test_the_embed_command_table_says_what_sne_was_built_with_and_why_a_network_failed(monkeypatch):
    from sne.encoders import sne as sne_module

    page = _script("make_results_md", "scripts")
    today = dict(SNEEncoder().options)
    data = {"benchmark": "embed_cli", "method": "m", "command": "python benchmarks/bench_embed_cli.py", "device": "cpu",
            "cpu": "a CPU", "torch": "2", "threads": 1, "omp_wait_policy": "PASSIVE", "encoder": "sne",
            "encoder_options_given": {}, "encoder_options_resolved": today,
            "networks": [{"network": "resnet18", "parameters": 11173962, "exit_code": 0, "seconds": 5.0,
                          "peak_rss_mb": 900},
                         {"network": "vit_s16", "parameters": 21669514, "exit_code": 2, "seconds": 3.0,
                          "peak_rss_mb": 400, "error": "x.safetensors: bad"}]}
    text = "\n".join(page.bench_section(ROOT / "results" / "bench_embed_cli.json", data))
    assert "SNE at today's defaults" in text
    assert "| resnet18 | 11,173,962 | 5.000 | 900 | 0 |" in text
    assert "2 (x.safetensors: bad)" in text
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_sab", 2)
    assert 'built with {"chunk_sab": 1}' in "\n".join(page.bench_section(ROOT / "results" / "x.json", data))


def test_attention_sharpness_script_measures_every_attention_block_and_refuses_a_bad_run_in_one_line(
        tiny_sne_run, tmp_path, monkeypatch, capsys):
    import json
    import sys

    from sne.encoders import set_blocks
    from sne.train.run import load_run

    script = _script("attention_logits", "scripts")
    out = tmp_path / "attention.json"
    monkeypatch.setattr(sys, "argv", ["attention_logits.py", str(tiny_sne_run), "--out", str(out), "--networks", "8"])
    assert script.main() == 0
    data = json.loads(out.read_text())
    assert set_blocks.F.scaled_dot_product_attention is torch.nn.functional.scaled_dot_product_attention
    (row,) = data["runs"]
    blocks = [name for name, m in load_run(tiny_sne_run, device="cpu").predictor.encoder.named_modules()
              if isinstance(m, set_blocks.MAB)]
    # PMAs with one seed query sets of several keys; every block is measured, each entropy within [0, 1].
    assert [b["block"] for b in row["blocks"]] == blocks
    assert all(b["logit_std"] >= 0 and 0 <= b["relative_entropy"] <= 1 + 1e-6 for b in row["blocks"])
    assert row["networks"] == 8 and row["epochs"] == 1
    page = _script("make_results_md", "scripts")
    table = page.attention_logits_section(ROOT / "results" / "attention_logits.json", data)
    assert sum(line.startswith("| `") for line in table) == len(blocks)

    monkeypatch.setattr(sys, "argv", ["attention_logits.py", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.json")])
    assert script.main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing" in err and not (tmp_path / "x.json").exists()
