"""The ``vit`` recipe: small vision transformers of sampled size, trained with sampled settings.

The network (:class:`ZooViT`) is the small ViT the SNE paper's transformer zoo uses (written here
from its description): a convolutional patch embedding (kernel = stride = patch size), a learned
class token, a learned positional embedding, ``depth`` pre-norm transformer blocks (x + attention
(LayerNorm(x)), then x + MLP(LayerNorm(x)); multi-head self-attention with one fused q/k/v linear
and an output projection; MLP width -> 2 * width -> width with GELU), a final LayerNorm and a
linear head on the class token. Dropout (inverted, per network) follows the positional embedding,
every attention output and every MLP output.

Per block of ``arch_block`` network ids (:mod:`sne.zoo.module_recipes`): depth 1-6, width 16, 32,
48 or 64, heads 1, 2 or 4, patch size from ``patches`` (each must divide ``image_size``). Per
network: optimizer, learning rate, weight decay, dropout (uniform in [0, ``dropout_max``]),
fraction of the training data and epochs (``epochs_min``..``epochs``); one row per network.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sne.errors import SneError
from sne.zoo.cnn_nets import OPTIMIZERS
from sne.zoo.module_recipes import ModuleRecipe, resolve_epochs
from sne.zoo.recipes import register_recipe

DEPTHS = (1, 6)
WIDTHS = (16, 32, 48, 64)
HEADS = (1, 2, 4)
MLP_RATIO = 2


def _drop(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, MLP_RATIO * width), nn.GELU(), nn.Linear(MLP_RATIO * width, width))

    def forward(self, x, attn_mask=None, mlp_mask=None):
        x = x + _drop(self.attn(self.norm1(x)), attn_mask)
        return x + _drop(self.mlp(self.norm2(x)), mlp_mask)


class ZooViT(nn.Module):
    """One ViT of the zoo (see the module docstring)."""

    def __init__(self, depth: int, width: int, heads: int, patch: int, image_size: int, classes: int = 10) -> None:
        super().__init__()
        tokens = (image_size // patch) ** 2 + 1
        self.patch_embed = nn.Conv2d(1, width, patch, stride=patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, width))
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x, masks=None):
        """``masks``: None, or 1 + 2 * depth inverted-dropout masks of shape (B, tokens, width)."""
        masks = masks or [None] * (1 + 2 * len(self.blocks))
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = _drop(x, masks[0])
        for i, block in enumerate(self.blocks):
            x = block(x, masks[1 + 2 * i], masks[2 + 2 * i])
        return self.head(self.norm(x)[:, 0])


@register_recipe
class ViTRecipe(ModuleRecipe):
    name = "vit"
    summary = "small ViTs of sampled depth, width, heads and patch size with sampled training; target: test_accuracy"
    options = {"epochs": 10, "epochs_min": 2, "dropout_max": 0.3, "patches": [4, 7, 14]}
    # Measured on digits (32 ViTs, up to 4 epochs, no warm-up): Adam/RMSProp above ~2e-3 and SGD
    # above ~0.2 left most 49-token ViTs at chance, as did Adam below ~1e-4 and SGD below ~1e-2.
    lr_ranges = {"sgd": (1e-2, 2e-1), "adam": (1e-4, 2e-3), "rmsprop": (1e-4, 2e-3)}
    weight_decay_range = (1e-6, 1e-1)
    class_columns = {"optimizer": OPTIMIZERS}

    def resolve_own(self, o: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
        dropout_max, patches, size = o["dropout_max"], o["patches"], common["image_size"]
        if isinstance(dropout_max, bool) or not isinstance(dropout_max, (int, float)) or not 0 <= dropout_max < 1:
            raise SneError(f"vit option 'dropout_max' must be a number in [0, 1), got {dropout_max!r}")
        if not (isinstance(patches, list) and patches and all(
                isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= size and size % p == 0 for p in patches)):
            raise SneError(f"vit option 'patches' must be a list of patch sizes that divide image_size {size}, "
                           f"e.g. [4,7,14] for 28; got {patches!r}")
        return {**resolve_epochs(self.name, o), "dropout_max": float(dropout_max), "patches": sorted(set(patches))}

    def sample_architecture(self, rng: np.random.Generator, options: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "depth": int(rng.integers(DEPTHS[0], DEPTHS[1] + 1)),
            "width": int(WIDTHS[rng.integers(len(WIDTHS))]),
            "heads": int(HEADS[rng.integers(len(HEADS))]),
            "patch": int(options["patches"][rng.integers(len(options["patches"]))]),
        }

    def sample_training(self, rng: np.random.Generator, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"dropout": float(rng.uniform(0.0, options["dropout_max"])),
                "epochs": int(rng.integers(options["epochs_min"], options["epochs"] + 1))}

    def build(self, arch: Mapping[str, Any], options: Mapping[str, Any]) -> nn.Module:
        return ZooViT(arch["depth"], arch["width"], arch["heads"], arch["patch"], options["image_size"])

    def architecture_name(self, arch: Mapping[str, Any]) -> str:
        return f"vit-d{arch['depth']}-w{arch['width']}-h{arch['heads']}-p{arch['patch']}"

    def dropout_shapes(self, arch: Mapping[str, Any], options: Mapping[str, Any]) -> list[tuple[int, ...]]:
        tokens = (options["image_size"] // arch["patch"]) ** 2 + 1
        return [(tokens, arch["width"])] * (1 + 2 * arch["depth"])

    def own_targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "depth": {"kind": "regression", "description": "transformer blocks"},
            "width": {"kind": "regression", "description": "embedding width"},
            "heads": {"kind": "regression", "description": "attention heads"},
            "patch": {"kind": "regression", "description": "patch size (pixels per side)"},
            "dropout": {"kind": "regression", "description": "dropout rate"},
            "epochs": {"kind": "regression", "description": "training epochs"},
        }

    def describe_training(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"epochs_uniform_integer": [options["epochs_min"], options["epochs"]],
                "dropout_uniform": [0.0, options["dropout_max"]],
                "architecture_choices": {"depth": list(DEPTHS), "width": list(WIDTHS), "heads": list(HEADS),
                                         "patch": list(options["patches"]), "mlp_ratio": MLP_RATIO}}
