"""docs/RESULTS.md is generated from results/*.json: it must match what the generator writes now."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_results_page_is_regenerated_from_the_result_files():
    spec = importlib.util.spec_from_file_location("make_results_md", ROOT / "scripts" / "make_results_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "RESULTS.md").read_text() == module.render(), "run `make results` and commit"
