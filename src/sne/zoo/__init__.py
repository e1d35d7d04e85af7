"""Model zoos: the on-disk format, and recipes that train many networks at once.

Importing this package registers every built-in recipe.
"""

from sne.zoo.format import Zoo, generate_zoo, split_assignment, split_sizes, write_records_zoo, write_zoo
from sne.zoo.recipes import FitProgress, Recipe, Shard, derive_seed, get_recipe, recipe_names, register_recipe
from sne.zoo import sine_inr as _sine_inr  # noqa: F401  (registers "sine-inr")
from sne.zoo import digit_inr as _digit_inr  # noqa: F401  (registers "digit-inr")
from sne.zoo import cnn as _cnn  # noqa: F401  (registers "small-cnn" and "cnn-s")
from sne.zoo.unterthiner import import_unterthiner

#: Importers of published zoo formats: ``name -> function(directory, out, *, seed, command, ...)``.
IMPORTERS = {"unterthiner": import_unterthiner}

__all__ = [
    "IMPORTERS",
    "FitProgress",
    "Recipe",
    "Shard",
    "Zoo",
    "derive_seed",
    "generate_zoo",
    "get_recipe",
    "recipe_names",
    "register_recipe",
    "split_assignment",
    "split_sizes",
    "write_records_zoo",
    "write_zoo",
]
