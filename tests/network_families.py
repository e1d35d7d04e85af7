"""Tiny reference architectures of common network families, built locally (no torchvision).

Every factory returns ``(module, example_input)``: the module is in eval mode and float32, and it
and its input are drawn from ``torch.manual_seed(seed)`` inside a forked RNG (the caller's global
RNG state is left untouched). Models stay under ~50k parameters so a float64 forward takes
milliseconds. Normalisation layers get random affine parameters and running statistics, so
permutation tests on them are meaningful.

This is a helper module imported by tests, not a test file.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FAMILIES",
    "HELD_OUT_VARIANTS",
    "gpt",
    "lstm_model",
    "mobilenet",
    "resnet",
    "unet",
    "vit",
    "vit_post_norm",
]


# --------------------------------------------------------------------------------------------- helpers
@torch.no_grad()
def _randomize_norms(module: nn.Module) -> None:
    """Give BatchNorm/LayerNorm layers non-trivial affine parameters and running statistics."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.affine:
                m.weight.copy_(torch.empty_like(m.weight).uniform_(0.5, 1.5) * torch.sign(torch.randn_like(m.weight) + 1.0))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
            if m.track_running_stats:
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
                m.num_batches_tracked.fill_(10)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            m.weight.copy_(1.0 + 0.2 * torch.randn_like(m.weight))
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn_like(m.bias))


def _finish(module: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    _randomize_norms(module)
    return module.float().eval(), example_input


# --------------------------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """torchvision-style BasicBlock; residual written as ``out += identity``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class BasicBlockAdd(BasicBlock):
    """Same block, residual written as ``out = out + identity`` and functional relu."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, depth_per_stage=(1, 1), widths=(8, 16), in_channels=3, num_classes=10):
        super().__init__()
        if len(depth_per_stage) != len(widths):
            raise ValueError("depth_per_stage and widths must have the same length")
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self._block_count = 0
        stages = []
        for i, (depth, width) in enumerate(zip(depth_per_stage, widths)):
            stages.append(self._make_layer(width, depth, stride=1 if i == 0 else 2))
        # torchvision names the stages layer1, layer2, ...
        for i, stage in enumerate(stages):
            setattr(self, f"layer{i + 1}", stage)
        self.num_stages = len(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = []
        for j in range(blocks):
            block = BasicBlock if self._block_count % 2 == 0 else BasicBlockAdd
            self._block_count += 1
            if j == 0:
                layers.append(block(self.inplanes, planes, stride, downsample))
                self.inplanes = planes
            else:
                layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet(depth_per_stage=(1, 1), widths=(8, 16), in_channels=3, num_classes=10, image=16, seed: int = 0):
    """Small ResNet: 3x3 stem + BN + ReLU, BasicBlock stages (stride 2 from the second stage on,
    1x1-conv+BN downsample shortcuts), global average pool, linear head. Input (2, C, image, image)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet(tuple(depth_per_stage), tuple(widths), in_channels, num_classes)
        x = torch.randn(2, in_channels, image, image)
        return _finish(model, x)


# --------------------------------------------------------------------------------------------- ViT
class ViT(nn.Module):
    def __init__(self, dim=16, depth=2, heads=2, patch=4, image=16, in_channels=1, num_classes=10, mlp_ratio=2,
                 norm_first=True, activation="gelu"):
        super().__init__()
        if image % patch:
            raise ValueError("image size must be divisible by patch size")
        num_patches = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, num_patches + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim * mlp_ratio, dropout=0.0, activation=activation,
                                           batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, dim, H', W')
        x = x.flatten(2).transpose(1, 2)  # (B, N, dim)
        b = x.shape[0]
        cls = self.cls_token.expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.pos_embed
        x = self.encoder(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def vit(dim=16, depth=2, heads=2, patch=4, image=16, in_channels=1, num_classes=10, mlp_ratio=2, seed: int = 0,
        norm_first: bool = True, activation: str = "gelu"):
    """Pre-norm ViT: Conv2d patch embedding, class token, learned positional embedding,
    nn.TransformerEncoder (norm_first, GELU), final LayerNorm, linear head on the class token."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViT(dim, depth, heads, patch, image, in_channels, num_classes, mlp_ratio,
                    norm_first=norm_first, activation=activation)
        x = torch.randn(2, in_channels, image, image)
        return _finish(model, x)


def vit_post_norm(**options):
    """As :func:`vit` but post-norm encoder layers (norm_first=False) with ReLU."""
    return vit(**options, norm_first=False, activation="relu")


# --------------------------------------------------------------------------------------------- GPT
class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.dim = dim
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(self.dim, dim=-1)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab=50, dim=16, depth=2, heads=2, context=8):
        super().__init__()
        self.context = context
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.lm_head(x)


def gpt(vocab=50, dim=16, depth=2, heads=2, context=8, seed: int = 0):
    """nanoGPT-style decoder: token + positional Embedding, pre-LN blocks with fused ``qkv`` Linear,
    causal SDPA, ``proj``; GELU MLP (4x); final LayerNorm; bias-free lm head. Input: LongTensor (2, context)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(vocab, dim, depth, heads, context)
        x = torch.randint(0, vocab, (2, context), dtype=torch.long)
        return _finish(model, x)


# --------------------------------------------------------------------------------------------- MobileNet
def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 block: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = _conv_bn_relu6(cin, cin, 3, stride=stride, groups=cin)
        self.pointwise = _conv_bn_relu6(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: pointwise expand + depthwise + linear pointwise project, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand_ratio: int = 2):
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv_bn_relu6(cin, hidden, 1),
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNet(nn.Module):
    def __init__(self, widths=(8, 16), in_channels=3, num_classes=10, expand_ratio=2):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, widths[0], 3)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers.append(DepthwiseSeparable(cin, cout, stride=2))
        layers.append(InvertedResidual(widths[-1], widths[-1], stride=1, expand_ratio=expand_ratio))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet(widths=(8, 16), in_channels=3, num_classes=10, expand_ratio=2, image=16, seed: int = 0):
    """MobileNet-style: 3x3 stem conv+BN+ReLU6, one stride-2 depthwise-separable block per width change,
    one inverted-residual block (expansion ``expand_ratio``, residual add), global pool, linear head."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MobileNet(tuple(widths), in_channels, num_classes, expand_ratio)
        x = torch.randn(2, in_channels, image, image)
        return _finish(model, x)


# --------------------------------------------------------------------------------------------- UNet
class DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Up(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cin // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, base=4, depth=2, in_channels=1, out_channels=2):
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.downs = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.downs.append(DoubleConv(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(chans[-2], chans[-1])
        self.ups = nn.ModuleList([Up(c) for c in reversed(chans[1:])])
        self.out = nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.out(x)


def unet(base=4, depth=2, in_channels=1, out_channels=2, image=16, seed: int = 0):
    """Small UNet: ``depth`` encoder double-convs (Conv-BN-ReLU x2) with MaxPool, bottleneck double-conv,
    decoder ConvTranspose2d(c, c//2, 2, stride 2) + cat skip + double-conv, final 1x1 conv. Input (1, C, 16, 16)."""
    if image % (2**depth):
        raise ValueError("image size must be divisible by 2**depth")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(base, depth, in_channels, out_channels)
        x = torch.randn(1, in_channels, image, image)
        return _finish(model, x)


# --------------------------------------------------------------------------------------------- LSTM (unsupported)
class LSTMModel(nn.Module):
    def __init__(self, vocab=50, dim=16, hidden=16, num_classes=10):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(idx))
        return self.head(out[:, -1])


def lstm_model(vocab=50, dim=16, hidden=16, num_classes=10, context=8, seed: int = 0):
    """Embedding + single-layer nn.LSTM + linear head on the last step; recurrent layers should be refused."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LSTMModel(vocab, dim, hidden, num_classes)
        x = torch.randint(0, vocab, (2, context), dtype=torch.long)
        return _finish(model, x)


# --------------------------------------------------------------------------------------------- registries
FAMILIES = {
    "resnet": resnet,
    "vit": vit,
    "gpt": gpt,
    "mobilenet": mobilenet,
    "unet": unet,
}

HELD_OUT_VARIANTS = [
    ("resnet-3stage-d2", partial(resnet, depth_per_stage=(2, 2, 2), widths=(8, 16, 32))),
    ("resnet-gray-d2-1", partial(resnet, depth_per_stage=(2, 1), widths=(6, 12), in_channels=1, num_classes=5)),
    ("vit-dim24-h3-postnorm", partial(vit_post_norm, dim=24, heads=3)),
    ("vit-dim24-h3-d3", partial(vit, dim=24, heads=3, depth=3)),
    ("vit-patch2-rgb", partial(vit, patch=2, image=8, in_channels=3)),
    ("gpt-h4", partial(gpt, heads=4)),
    ("gpt-dim24-h4-d3", partial(gpt, dim=24, heads=4, depth=3, context=6)),
    ("mobilenet-3widths", partial(mobilenet, widths=(8, 12, 16))),
    ("mobilenet-gray-exp3", partial(mobilenet, widths=(6, 12), in_channels=1, expand_ratio=3)),
    ("unet-depth3", partial(unet, depth=3)),
    ("unet-base6-rgb", partial(unet, base=6, in_channels=3, out_channels=3)),
]


# --------------------------------------------------------------------------------------------- more wirings
class Bottleneck(nn.Module):
    def __init__(s, cin, mid, cout, stride):
        super().__init__()
        s.c1=nn.Conv2d(cin,mid,1,bias=False); s.b1=nn.BatchNorm2d(mid)
        s.c2=nn.Conv2d(mid,mid,3,stride,1,bias=False); s.b2=nn.BatchNorm2d(mid)
        s.c3=nn.Conv2d(mid,cout,1,bias=False); s.b3=nn.BatchNorm2d(cout)
        s.down = None if (cin==cout and stride==1) else nn.Sequential(nn.Conv2d(cin,cout,1,stride,bias=False), nn.BatchNorm2d(cout))
    def forward(s,x):
        y=F.relu(s.b1(s.c1(x))); y=F.relu(s.b2(s.c2(y))); y=s.b3(s.c3(y))
        return F.relu(y + (x if s.down is None else s.down(x)))
def _resnet_bottleneck():
    m=nn.Sequential(nn.Conv2d(3,8,3,padding=1,bias=False), nn.BatchNorm2d(8), nn.ReLU(), Bottleneck(8,4,16,1), Bottleneck(16,4,16,1), Bottleneck(16,8,32,2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32,10))
    return m.eval(), torch.randn(2,3,16,16)

class ConvNeXtBlock(nn.Module):
    def __init__(s, d):
        super().__init__()
        s.dw=nn.Conv2d(d,d,7,padding=3,groups=d); s.norm=nn.LayerNorm(d); s.pw1=nn.Linear(d,4*d); s.pw2=nn.Linear(4*d,d)
        s.gamma=nn.Parameter(torch.rand(d)+0.5)
    def forward(s,x):
        y=s.dw(x).permute(0,2,3,1); y=s.pw2(F.gelu(s.pw1(s.norm(y)))); y=s.gamma*y
        return x + y.permute(0,3,1,2)
def _convnext():
    m=nn.Sequential(nn.Conv2d(3,8,4,4), ConvNeXtBlock(8), ConvNeXtBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8,5))
    return m.eval(), torch.randn(2,3,16,16)

class MixerBlock(nn.Module):
    def __init__(s, tokens, d):
        super().__init__()
        s.n1=nn.LayerNorm(d); s.t1=nn.Linear(tokens,2*tokens); s.t2=nn.Linear(2*tokens,tokens)
        s.n2=nn.LayerNorm(d); s.c1=nn.Linear(d,2*d); s.c2=nn.Linear(2*d,d)
    def forward(s,x):
        y=s.n1(x).transpose(1,2); x = x + s.t2(F.gelu(s.t1(y))).transpose(1,2)
        return x + s.c2(F.gelu(s.c1(s.n2(x))))
class Mixer(nn.Module):
    def __init__(s):
        super().__init__(); s.patch=nn.Conv2d(1,8,4,4); s.blocks=nn.Sequential(MixerBlock(16,8), MixerBlock(16,8)); s.norm=nn.LayerNorm(8); s.head=nn.Linear(8,10)
    def forward(s,x):
        x=s.patch(x).flatten(2).transpose(1,2); x=s.blocks(x); return s.head(s.norm(x).mean(1))
def _mixer(): return Mixer().eval(), torch.randn(2,1,16,16)

class SE(nn.Module):
    def __init__(s,c):
        super().__init__(); s.fc1=nn.Conv2d(c,c//2,1); s.fc2=nn.Conv2d(c//2,c,1)
    def forward(s,x): return x*torch.sigmoid(s.fc2(F.silu(s.fc1(F.adaptive_avg_pool2d(x,1)))))
def _effnet():
    m=nn.Sequential(nn.Conv2d(3,8,3,padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.Conv2d(8,8,3,padding=1,groups=8), SE(8), nn.Conv2d(8,16,1), nn.BatchNorm2d(16), nn.Upsample(scale_factor=2), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16,3))
    return m.eval(), torch.randn(2,3,8,8)

class TiedLM(nn.Module):
    def __init__(s):
        super().__init__(); s.emb=nn.Embedding(30,12); s.body=nn.TransformerEncoderLayer(12,3,24,0.0,batch_first=True); s.out=nn.Linear(12,30,bias=False); s.out.weight=s.emb.weight
    def forward(s,t): return s.out(s.body(s.emb(t)))
def _tied(): return TiedLM().eval(), torch.randint(0,30,(2,5))

def _conv1d_audio():
    m=nn.Sequential(nn.Conv1d(1,8,9,stride=2), nn.GroupNorm(4,8), nn.ReLU(), nn.Conv1d(8,8,3,dilation=2), nn.InstanceNorm1d(8, affine=True), nn.GELU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8,4))
    return m.eval(), torch.randn(2,1,64)
def _conv3d():
    m=nn.Sequential(nn.Conv3d(1,4,3), nn.BatchNorm3d(4), nn.ReLU(), nn.ConvTranspose3d(4,2,2,stride=2), nn.ReLU(), nn.Conv3d(2,3,1))
    return m.eval(), torch.randn(1,1,6,6,6)
class CrossAttn(nn.Module):
    def __init__(s):
        super().__init__(); s.q=nn.Linear(6,8); s.m=nn.Linear(5,8); s.att=nn.MultiheadAttention(8,2,batch_first=True); s.o=nn.Linear(8,2)
    def forward(s,x):
        q=s.q(x); mem=s.m(x[..., :5].flip(1)); return s.o(s.att(q,mem,mem)[0])
def _cross(): return CrossAttn().eval(), torch.randn(2,4,6)


def _seeded(build, seed: int = 0):
    """Run factory ``build`` under ``seed`` without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module, example = build()
        return _finish(module, example)


#: Other wirings people train: bottleneck ResNet, ConvNeXt (depthwise 7x7, channels-last LayerNorm,
#: layer scale), MLP-Mixer (a linear layer over the token axis), squeeze-and-excitation gating and
#: upsampling, a language model with its output layer tied to the embedding, 1-D audio convolutions
#: with group and instance norms, 3-D (transposed) convolutions, cross-attention.
MORE_WIRINGS = [(name.replace("_", "-"), partial(_seeded, build)) for name, build in [
    ("resnet_bottleneck", _resnet_bottleneck), ("convnext", _convnext), ("mixer", _mixer), ("squeeze_excite", _effnet),
    ("tied_lm", _tied), ("conv1d_audio", _conv1d_audio), ("conv3d", _conv3d), ("cross_attention", _cross),
]]
