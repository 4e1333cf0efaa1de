"""EDM's image networks: ADM (`DhariwalUNet`) and DDPM++ / NCSN++ (`SongUNet`) behind EDM preconditioning.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (arXiv:2206.00364),
§5 and Table 7; architectures from Dhariwal & Nichol 2021 (ADM) and Song et al. 2021 (DDPM++ / NCSN++).
The official definitions are in NVlabs/edm `training/networks.py`. No maintained library ships these networks
(diffusers' UNet2DModel differs in block layout, embedding and attention), and the paper teachers
(`edm-imagenet-64x64-cond-adm.pkl`, `edm-cifar10-32x32-cond-vp.pkl`) only exist for them, so this is our own
port. Module and parameter names follow the official ones, so a state dict of the official network loads
here unchanged (`common.diffusion.edm_convert` turns the official pickles into such state dicts).

`EDMPrecond` (alias `EDMDenoiser`) has this repository's denoiser API (`common.diffusion.denoisers.Denoiser`): x0 from
`net(x, sigma, cond)`, and the feature tap `mid` is the encoder output (the 8x8 bottleneck of the ImageNet ADM, 768
channels), the map DMD2's official fork hands to its GAN head.
Left out: the VP / VE / iDDPM preconditioners (the paper teachers use EDM's), the fp16 switch (use autocast;
DMD2 runs the ImageNet network in bf16).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from common.diffusion.denoisers import Denoiser, FeatureTaps, edm_precond_coeffs
from common.diffusion.schedules import bcast

__all__ = ["EDMNetConfig", "SongUNet", "DhariwalUNet", "EDMPrecond", "EDMDenoiser", "build_edm_net", "PRESET_CONFIGS"]


def _init(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """The four initialisations the EDM networks use (xavier / kaiming, uniform / normal)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"init mode: {mode!r} not in xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal")


class Linear(nn.Module):
    def __init__(self, cin, cout, bias=True, init_mode="kaiming_normal", init_weight=1.0, init_bias=0.0):
        super().__init__()
        self.in_features, self.out_features = cin, cout
        self.weight = nn.Parameter(_init((cout, cin), init_mode, cin, cout) * init_weight)
        self.bias = nn.Parameter(_init((cout,), init_mode, cin, cout) * init_bias) if bias else None

    def forward(self, x):
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), b)


class Conv2d(nn.Module):
    """3x3 / 1x1 convolution with optional 2x up- or down-sampling by a separable FIR filter.

    kernel 0 = resampling only. `fused` merges the resampling into the convolution's stride (NCSN++ residual
    encoder). The filter is a registered buffer as in the official network, so state dicts match.
    """

    def __init__(
        self,
        cin,
        cout,
        kernel,
        bias=True,
        up=False,
        down=False,
        resample_filter=(1, 1),
        fused_resample=False,
        init_mode="kaiming_normal",
        init_weight=1.0,
        init_bias=0.0,
    ):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        self.in_channels, self.out_channels = cin, cout
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fan = dict(mode=init_mode, fan_in=cin * kernel * kernel, fan_out=cout * kernel * kernel)
        self.weight = nn.Parameter(_init((cout, cin, kernel, kernel), **fan) * init_weight) if kernel else None
        self.bias = nn.Parameter(_init((cout,), **fan) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f2 = torch.outer(f, f)[None, None] / f.sum() ** 2
        self.register_buffer("resample_filter", f2 if (up or down) else None)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            up_f = (f * 4).repeat(self.in_channels, 1, 1, 1)
            x = F.conv_transpose2d(x, up_f, groups=self.in_channels, stride=2, padding=w_pad + f_pad)
            x = F.conv2d(x, w)
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.repeat(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                up_f = (f * 4).repeat(self.in_channels, 1, 1, 1)
                x = F.conv_transpose2d(x, up_f, groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.repeat(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """GroupNorm with at most `num_groups` groups and at least `min_per_group` channels per group."""

    def __init__(self, num_channels, num_groups=32, min_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block (GroupNorm-SiLU-conv, embedding as shift or scale/shift) with optional self-attention.

    The qkv projection lays its 3C output channels out as (head, channel, q/k/v), as in the official network,
    so that converted attention weights keep their meaning.
    """

    def __init__(
        self,
        cin,
        cout,
        emb_channels,
        up=False,
        down=False,
        attention=False,
        num_heads=None,
        channels_per_head=64,
        dropout=0.0,
        skip_scale=1.0,
        eps=1e-5,
        resample_filter=(1, 1),
        resample_proj=False,
        adaptive_scale=True,
        init=None,
        init_zero=None,
        init_attn=None,
    ):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else {"init_weight": 0.0}
        self.in_channels, self.out_channels = cin, cout
        self.num_heads = (num_heads if num_heads is not None else cout // channels_per_head) if attention else 0
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        rs = dict(resample_filter=resample_filter)
        self.norm0 = GroupNorm(cin, eps=eps)
        self.conv0 = Conv2d(cin, cout, 3, up=up, down=down, **rs, **init)
        self.affine = Linear(emb_channels, cout * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(cout, eps=eps)
        self.conv1 = Conv2d(cout, cout, 3, **init_zero)
        self.skip = None
        if cout != cin or up or down:
            k = 1 if (resample_proj or cout != cin) else 0
            self.skip = Conv2d(cin, cout, k, up=up, down=down, **rs, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(cout, eps=eps)
            self.qkv = Conv2d(cout, cout * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(cout, cout, 1, **init_zero)

    def forward(self, x, emb):
        res = x
        x = self.conv0(F.silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + p))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(res) if self.skip is not None else res)) * self.skip_scale
        if self.num_heads:
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
            # softmax(q^T k / sqrt(d)) v over the spatial positions of each head
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = (self.proj(a.transpose(1, 2).reshape(b, c, h, w)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos, sin] of a scalar (ADM / DDPM++ noise embedding)."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar (NCSN++ noise embedding); the frequencies are a buffer."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


@dataclass(frozen=True)
class EDMNetConfig:
    """Everything that defines an EDM network (the official constructor's keyword arguments)."""

    model_type: str = "DhariwalUNet"  # or "SongUNet"
    img_resolution: int = 64
    img_channels: int = 3
    label_dim: int = 0
    sigma_data: float = 0.5
    model_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class SongUNet(nn.Module):
    """DDPM++ (positional embedding, standard encoder) / NCSN++ (Fourier, residual encoder) U-Net."""

    def __init__(
        self,
        img_resolution,
        in_channels,
        out_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        channel_mult_emb=4,
        num_blocks=4,
        attn_resolutions=(16,),
        dropout=0.10,
        label_dropout=0.0,
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=(1, 1),
    ):
        super().__init__()
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type: {embedding_type!r} not in fourier, positional")
        if encoder_type not in ("standard", "skip", "residual") or decoder_type not in ("standard", "skip"):
            raise ValueError(f"encoder_type/decoder_type: {encoder_type!r}/{decoder_type!r} not supported")
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        blk = dict(
            emb_channels=emb_ch,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=init_zero,
            init_attn=init_attn,
        )
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_ch, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_ch)
        self.map_label = Linear(label_dim, noise_ch, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)

        self.enc = nn.ModuleDict()
        cout, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{r}x{r}_conv"] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(cout, cout, down=True, **blk)
                if encoder_type == "skip":
                    self.enc[f"{r}x{r}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{r}x{r}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{r}x{r}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True, **init
                    )
                    caux = cout
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(cin, cout, attention=r in attn_resolutions, **blk)
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{r}x{r}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = i == num_blocks and r in attn_resolutions
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(cin, cout, attention=attn, **blk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{r}x{r}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{r}x{r}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{r}x{r}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)

    def _embed(self, noise_labels, class_labels, augment_labels):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # DDPM++ orders [sin, cos]
        if self.map_label is not None:
            lab = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand((lab.shape[0], 1), device=lab.device) >= self.label_dropout
                lab = lab * keep.to(lab.dtype)
            emb = emb + self.map_label(lab * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self._embed(noise_labels, class_labels, augment_labels)
        skips, aux = [], x
        for name, m in self.enc.items():
            if "aux_down" in name:
                aux = m(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + m(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + m(aux)) / math.sqrt(2)
            else:
                x = m(x, emb) if isinstance(m, UNetBlock) else m(x)
                skips.append(x)
        aux, tmp = None, None
        for name, m in self.dec.items():
            if "aux_up" in name:
                aux = m(aux)
            elif "aux_norm" in name:
                tmp = m(x)
            elif "aux_conv" in name:
                tmp = m(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != m.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = m(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """ADM U-Net (Dhariwal & Nichol 2021) as configured by EDM for ImageNet-64 (Table 7)."""

    def __init__(
        self,
        img_resolution,
        in_channels,
        out_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        channel_mult_emb=4,
        num_blocks=3,
        attn_resolutions=(32, 16, 8),
        dropout=0.10,
        label_dropout=0.0,
    ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0.0, init_bias=0.0)
        blk = dict(emb_channels=emb_ch, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)
        self.map_label = (
            Linear(label_dim, emb_ch, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(label_dim))
            if label_dim
            else None
        )
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{r}x{r}_conv"] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(cout, cout, down=True, **blk)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(cin, cout, attention=r in attn_resolutions, **blk)
        skips = [m.out_channels for m in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{r}x{r}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(cin, cout, attention=r in attn_resolutions, **blk)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            lab = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand((lab.shape[0], 1), device=lab.device) >= self.label_dropout
                lab = lab * keep.to(lab.dtype)
            emb = emb + self.map_label(lab)
        emb = F.silu(emb)
        skips = []
        for m in self.enc.values():
            x = m(x, emb) if isinstance(m, UNetBlock) else m(x)
            skips.append(x)
        for m in self.dec.values():
            if x.shape[1] != m.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = m(x, emb)
        x = self.out_conv(F.silu(self.out_norm(x)))
        return x


ARCHS = {"DhariwalUNet": DhariwalUNet, "SongUNet": SongUNet}


class EDMPrecond(Denoiser):
    """EDM preconditioning (Eq. 7) around a backbone: D(x, sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4).

    Called with the repository's denoiser API (common.diffusion.denoisers.Denoiser): `net(x, sigma, cond)` -> x0,
    `net(x, sigma, cond, pred=True, taps=("mid",))` -> Prediction with the encoder output as tap `mid`. `cond` is a
    class label (int tensor, one-hot internally) or a one-hot / soft label matrix.
    """

    def __init__(self, cfg: EDMNetConfig):
        super().__init__()
        if cfg.model_type not in ARCHS:
            raise ValueError(f"model_type: {cfg.model_type!r} not in {sorted(ARCHS)}")
        self.cfg = cfg
        self.img_resolution, self.img_channels, self.label_dim = cfg.img_resolution, cfg.img_channels, cfg.label_dim
        self.sigma_data = cfg.sigma_data
        self.model = ARCHS[cfg.model_type](
            img_resolution=cfg.img_resolution,
            in_channels=cfg.img_channels,
            out_channels=cfg.img_channels,
            label_dim=cfg.label_dim,
            **cfg.model_kwargs,
        )
        enc = list(self.model.enc.values())
        self.taps = FeatureTaps({"mid": enc[-1]})  # the encoder output: DMD2's GAN-head input on ImageNet

    @property
    def feature_channels(self) -> int:
        return list(self.model.enc.values())[-1].out_channels

    def _labels(self, class_labels, n, device):
        if not self.label_dim:
            return None
        if class_labels is None:  # unconditional query of a conditional net: all-zero label vector
            return torch.zeros((n, self.label_dim), device=device)
        if class_labels.dtype in (torch.int64, torch.int32):
            return F.one_hot(class_labels.long(), self.label_dim).float()
        return class_labels.float().reshape(n, self.label_dim)

    def _predict(self, x, sigma, cond, want_eps):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_precond_coeffs(sigma, self.sigma_data)
        f = self.model(bcast(c_in, x) * x, c_noise, class_labels=self._labels(cond, x.shape[0], x.device))
        x0 = bcast(c_skip, x) * x.float() + bcast(c_out, x) * f.float()
        return x0, ((x.float() - x0) / bcast(sigma, x) if want_eps else None)


EDMDenoiser = EDMPrecond  # the name the papers' builders use


# The two paper teachers (EDM Table 7 / the official training presets) and tiny twins for tests.
PRESET_CONFIGS = {
    "imagenet64-adm": EDMNetConfig(
        "DhariwalUNet",
        64,
        3,
        1000,
        0.5,
        dict(model_channels=192, channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(32, 16, 8), dropout=0.0),
    ),
    "cifar10-ddpmpp": EDMNetConfig(
        "SongUNet",
        32,
        3,
        10,
        0.5,
        dict(
            model_channels=128,
            channel_mult=(2, 2, 2),
            augment_dim=9,
            embedding_type="positional",
            encoder_type="standard",
            decoder_type="standard",
            channel_mult_noise=1,
            resample_filter=(1, 1),
            dropout=0.0,
        ),
    ),
    "tiny-adm": EDMNetConfig(
        "DhariwalUNet",
        16,
        3,
        10,
        0.5,
        dict(model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), dropout=0.0),
    ),
    "tiny-ddpmpp": EDMNetConfig(
        "SongUNet",
        16,
        3,
        10,
        0.5,
        dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), augment_dim=9, dropout=0.0),
    ),
    "tiny-ncsnpp": EDMNetConfig(
        "SongUNet",
        16,
        3,
        0,
        0.5,
        dict(
            model_channels=16,
            channel_mult=(1, 2),
            num_blocks=1,
            attn_resolutions=(8,),
            embedding_type="fourier",
            channel_mult_noise=2,
            encoder_type="residual",
            decoder_type="skip",
            resample_filter=(1, 3, 3, 1),
            dropout=0.0,
        ),
    ),
}


def build_edm_net(cfg: EDMNetConfig | str | dict) -> EDMDenoiser:
    """An EDMDenoiser from a config, a dict of its fields, or a PRESET_CONFIGS name."""
    if isinstance(cfg, str):
        if cfg not in PRESET_CONFIGS:
            raise ValueError(f"EDM network preset: {cfg!r} not in {sorted(PRESET_CONFIGS)}")
        cfg = PRESET_CONFIGS[cfg]
    elif isinstance(cfg, dict):
        cfg = EDMNetConfig(**cfg)
    return EDMDenoiser(cfg)
