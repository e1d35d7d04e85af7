"""Model zoos: the on-disk format, and recipes that train many networks at once.

Importing this package registers every built-in recipe.
"""

from sne.zoo.format import Zoo, generate_zoo, split_assignment, split_sizes, write_records_zoo, write_zoo
from sne.zoo.recipes import FitProgress, Recipe, Shard, derive_seed, get_recipe, recipe_names, register_recipe
from sne.zoo import sine_inr as _sine_inr  # noqa: F401  (registers "sine-inr")
from sne.zoo import digit_inr as _digit_inr  # noqa: F401  (registers "digit-inr")
from sne.zoo import cnn as _cnn  # noqa: F401  (registers "small-cnn" and "cnn-s")
from sne.zoo import wild_park_zoo as _wild_park_zoo  # noqa: F401  (registers "wild-park")
from sne.zoo import resnet_zoo as _resnet_zoo  # noqa: F401  (registers "resnet")
from sne.zoo import vit_zoo as _vit_zoo  # noqa: F401  (registers "vit")
from sne.zoo.folder import export_zoo, import_folder
from sne.zoo.hf_zoo import import_hf_zoo
from sne.zoo.inr_sets import import_dwsnet, import_nfn_siren
from sne.zoo.schurholt import import_schurholt
from sne.zoo.unterthiner import import_unterthiner
from sne.zoo.wildpark import import_wildpark

#: Importers of zoo formats: ``name -> function(directory, out, *, seed, command, <its own options>)``;
#: each module's docstring gives the format's download location and layout.
IMPORTERS = {
    "folder": import_folder,
    "unterthiner": import_unterthiner,
    "dwsnet": import_dwsnet,
    "nfn-siren": import_nfn_siren,
    "schurholt": import_schurholt,
    "wildpark": import_wildpark,
    "hf-transformer": import_hf_zoo,
}

__all__ = [
    "IMPORTERS",
    "FitProgress",
    "Recipe",
    "Shard",
    "Zoo",
    "derive_seed",
    "export_zoo",
    "generate_zoo",
    "get_recipe",
    "recipe_names",
    "register_recipe",
    "split_assignment",
    "split_sizes",
    "write_records_zoo",
    "write_zoo",
]
