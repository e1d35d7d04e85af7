"""scripts/foreign_sine_inrs.py: sine INRs made by code apart from sne's recipes, imported as a test-only zoo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sne.zoo import Zoo, get_recipe

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "sne"


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_foreign_inrs_import_as_a_test_zoo_of_the_recipes_architecture(tmp_path):
    folder, out = tmp_path / "foreign", tmp_path / "zoo"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "foreign_sine_inrs.py"), str(folder), "--n", "3",
                    "--steps", "5"], check=True, capture_output=True, text=True, timeout=300)
    done = subprocess.run([str(SCRIPT), "zoo", "import", "folder", str(folder), "--targets",
                           str(folder / "targets.csv"), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    zoo = Zoo.open(out)
    table = pd.read_csv(folder / "targets.csv")
    assert list(zoo.targets) == ["frequency"] and len(zoo.split_ids("test")) == 3 and not len(zoo.split_ids("train"))
    assert zoo.target_values("frequency", zoo.split_ids("test")).tolist() == pytest.approx(table["frequency"].tolist())
    # The same layer shapes as the sine-inr recipe's SIRENs, so every INR-table encoder can read them.
    shapes = [tuple(layer.weight.shape) for layer in zoo.records([0])[0].layers]
    recipe = [tuple(layer["weight_shape"]) for layer in get_recipe("sine-inr").architecture({})]
    assert shapes == recipe
    # A bare state_dict does not say its activations; the script's module, given as --arch, does.
    assert {layer.activation for layer in zoo.records([0])[0].layers} == {None}
    traced = tmp_path / "traced"
    done = subprocess.run([str(SCRIPT), "zoo", "import", "folder", str(folder), "--targets", str(folder / "targets.csv"),
                           "--arch", f"{ROOT / 'scripts' / 'foreign_sine_inrs.py'}:architecture", "--out", str(traced)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [layer.activation for layer in Zoo.open(traced).records([0])[0].layers] == ["sine", "sine", "identity"]
