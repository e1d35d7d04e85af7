"""Helpers of the benchmark scripts in benchmarks/ (their measurements run in `make bench`, not here)."""

from __future__ import annotations

from pathlib import Path

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
