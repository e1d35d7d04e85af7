"""Model zoos: the on-disk format, and recipes that train many networks at once.

Importing this package registers every built-in recipe.
"""

from sne.zoo.format import Zoo, generate_zoo, split_assignment, split_sizes
from sne.zoo.recipes import FitProgress, Recipe, Shard, derive_seed, get_recipe, recipe_names, register_recipe
from sne.zoo import sine_inr as _sine_inr  # noqa: F401  (registers "sine-inr")

__all__ = [
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
]
