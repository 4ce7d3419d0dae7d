"""Vision encoders: image (B, 3, H, W) in [0, 1] -> tokens (B, N, C) and pooled (B, C).

Three interchangeable encoders, all returning a token *sequence* (so cross-attention and
prefix fusion can look at individual regions) plus one pooled vector (for FiLM):

* :class:`CNNEncoder`: a few strided convolutions for embedded boards. Optional CoordConv
  input channels (Liu et al. 2018) and spatial-softmax keypoint pooling (Levine et al.
  2016, "End-to-End Training of Deep Visuomotor Policies"; robomimic and Diffusion Policy
  use it): the expected image position of K learned feature detectors, which is what a
  manipulation policy needs (where is the object) far more than a global average.
  Optionally (``cnn_film``) every stage is FiLM-modulated by the instruction (Perez et al.
  2018; RT-1 does this inside its EfficientNet), so "the red cube" and "the blue cube"
  can make the keypoints look at different objects.
* :class:`ViTEncoder`: a Vision Transformer (Dosovitskiy et al. 2021) with class token,
  optional register tokens (Darcet et al. 2023) and pre-norm blocks; returns the patch
  tokens, not only the class token.
* :class:`PretrainedVisionTower`: a SigLIP (PaliGemma, pi0, OpenVLA) or CLIP vision tower
  loaded with ``transformers`` from a local directory; frozen by default.

:class:`MultiCameraEncoder` runs one shared encoder over all views in a single forward
pass (cameras folded into the batch) and adds a learned per-camera embedding so the
fusion trunk knows which view a token came from. Encoders with ``conditioned = True``
(the FiLM CNN) also take a conditioning vector (B, C_cond), shared by all views.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .transformer import Block, init_weights

# ImageNet statistics for the from-scratch CNN (inputs are RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm rather than BatchNorm: robot batches are small and inference is batch 1.
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class SpatialSoftmax(nn.Module):
    """Feature map (B, C, h, w) -> K keypoints (B, K, 2) in [-1, 1] image coordinates.

    A 1x1 conv makes K attention maps; a softmax over the h*w positions turns each into a
    distribution whose expected (x, y) is the keypoint (Levine et al. 2016).
    """

    def __init__(self, in_channels: int, num_keypoints: int, height: int, width: int):
        super().__init__()
        self.detector = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        # Learned softmax temperature (log scale), as in robomimic.
        self.log_temperature = nn.Parameter(torch.zeros(()))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # (h*w, 2)
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.detector(features).flatten(2)  # (B, K, h*w)
        attn = F.softmax(maps / self.log_temperature.exp(), dim=-1)
        return attn @ self.grid  # (B, K, 2)


class CNNEncoder(nn.Module):
    """Strided-conv encoder: [Conv3x3/2 -> GroupNorm -> (FiLM) -> SiLU] per stage, then pooling.

    ``film_dim`` > 0 adds one FiLM generator per stage, a Linear from the conditioning
    vector (B, film_dim) to per-channel (gamma, beta); the stage output becomes
    ``SiLU(GN(conv(x)) * (1 + gamma) + beta)`` (Perez et al. 2018, conv -> norm -> FiLM ->
    nonlinearity). The generators start at zero, i.e. the identity modulation, as in RT-1,
    so a FiLM CNN initially computes exactly what the plain CNN with the same weights does.
    The stage convolutions keep their ``stages.<i>`` names either way.
    """

    def __init__(
        self,
        image_size: int,
        channels: list[int],
        out_dim: int,
        coord_channels: bool = True,
        pooling: str = "spatial_softmax",
        num_keypoints: int = 16,
        film_dim: int = 0,
    ):
        super().__init__()
        self.coord_channels = coord_channels
        self.pooling = pooling
        self.conditioned = film_dim > 0
        in_ch = 3 + (2 if coord_channels else 0)
        stages, side = [], image_size
        for out_ch in channels:
            stages += [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1), _group_norm(out_ch), nn.SiLU()]
            in_ch, side = out_ch, (side + 1) // 2  # stride 2, padding 1: ceil(side / 2)
        self.stages = nn.Sequential(*stages)
        self.feature_side = side
        # One (gamma, beta) generator per stage; None without FiLM (state_dict unchanged).
        self.film = nn.ModuleList([nn.Linear(film_dim, 2 * c) for c in channels]) if self.conditioned else None
        if pooling == "spatial_softmax":
            self.keypoints = SpatialSoftmax(in_ch, num_keypoints, side, side)
            self.token_proj = nn.Linear(2, out_dim)  # one token per keypoint
            self.token_embed = nn.Parameter(torch.zeros(1, num_keypoints, out_dim))  # keypoint identity
            self.pool_proj = nn.Linear(2 * num_keypoints, out_dim)
        else:
            self.token_proj = nn.Linear(in_ch, out_dim)  # one token per feature-map cell
            self.token_embed = nn.Parameter(torch.zeros(1, side * side, out_dim))  # position
            self.pool_proj = nn.Linear(in_ch, out_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.apply(init_weights)
        nn.init.normal_(self.token_embed, std=0.02)
        if self.film is not None:
            for gen in self.film:  # identity modulation at init: gamma = 1 + 0, beta = 0
                nn.init.zeros_(gen.weight)
                nn.init.zeros_(gen.bias)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1]; cond (B, film_dim), required iff the encoder uses FiLM."""
        if self.conditioned and cond is None:
            raise ValueError("this CNN is FiLM-conditioned (cnn_film): pass the instruction embedding (B, C) as cond")
        if not self.conditioned and cond is not None:
            raise ValueError("this CNN takes no conditioning (cnn_film is false)")
        if cond is not None and (cond.ndim != 2 or cond.shape[0] != images.shape[0]):
            raise ValueError(f"cond must have shape ({images.shape[0]}, C), got {tuple(cond.shape)}")
        x = (images - self.mean) / self.std  # (B, 3, H, W)
        if self.coord_channels:
            B, _, H, W = x.shape
            ys, xs = torch.meshgrid(
                torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype),
                torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype),
                indexing="ij",
            )
            coords = torch.stack([xs, ys])[None].expand(B, 2, H, W)  # (B, 2, H, W)
            x = torch.cat([x, coords], dim=1)  # (B, 5, H, W)
        if self.film is None:
            f = self.stages(x)  # (B, C', h, w)
        else:
            f = x
            for i, gen in enumerate(self.film):
                conv, norm, act = self.stages[3 * i : 3 * i + 3]
                gamma, beta = gen(cond).chunk(2, dim=-1)  # 2 x (B, C_i)
                h = norm(conv(f))  # (B, C_i, h_i, w_i)
                f = act(h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
        if self.pooling == "spatial_softmax":
            kp = self.keypoints(f)  # (B, K, 2)
            tokens = self.token_proj(kp) + self.token_embed  # (B, K, C)
            pooled = self.pool_proj(kp.flatten(1))  # (B, C)
        else:
            cells = f.flatten(2).transpose(1, 2)  # (B, h*w, C')
            tokens = self.token_proj(cells) + self.token_embed  # (B, h*w, C)
            pooled = self.pool_proj(cells.mean(dim=1))  # (B, C)
        return tokens, pooled


class ViTEncoder(nn.Module):
    """ViT: patchify (conv with stride = patch), [CLS] + registers + patches, pre-norm blocks."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        num_heads: int,
        out_dim: int,
        num_registers: int = 0,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.num_patches = (image_size // patch_size) ** 2
        self.num_registers = num_registers
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        # Registers carry no position (Darcet et al.): they are scratch space for global
        # computation, which otherwise hijacks low-information patch tokens.
        self.registers = nn.Parameter(torch.zeros(1, num_registers, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, width))
        self.blocks = nn.ModuleList([Block(width, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim) if width != out_dim else nn.Identity()
        self.apply(init_weights)
        for p in (self.cls_token, self.registers, self.pos_embed):
            nn.init.normal_(p, std=0.02)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images - 0.5) / 0.5  # [0, 1] -> [-1, 1]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, W)
        B = x.shape[0]
        cls = self.cls_token.expand(B, -1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1+N, W)
        x = torch.cat([x[:, :1], self.registers.expand(B, -1, -1), x[:, 1:]], dim=1)  # (B, 1+R+N, W)
        for block in self.blocks:
            x = block(x)
        x = self.proj(self.ln_f(x))  # (B, 1+R+N, C)
        return x[:, 1 + self.num_registers :], x[:, 0]  # patch tokens (B, N, C), CLS (B, C)


class PretrainedVisionTower(nn.Module):
    """A SigLIP / CLIP vision tower from a local ``transformers`` directory + a projection.

    ``load_weights=False`` builds the architecture from the directory's config only; the
    checkpoint loader uses that for a trainable tower (``freeze=False``), whose weights are
    saved with the policy. A frozen tower is rebuilt from its source directory with its
    pretrained weights and checked against the sha256 the checkpoint recorded.
    Images are resized to the tower's native resolution (its position embeddings are
    fixed) and normalized with the statistics from ``preprocessor_config.json`` when
    present, else the SigLIP (0.5, 0.5) or CLIP defaults.
    """

    def __init__(self, path: str, out_dim: int, freeze: bool = True, load_weights: bool = True):
        super().__init__()
        from transformers import AutoConfig

        path = str(path)
        if not Path(path, "config.json").is_file():
            raise FileNotFoundError(f"vision tower directory {path!r} has no config.json")
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if "siglip" in model_type:
            from transformers import SiglipVisionConfig as Cfg, SiglipVisionModel as Model

            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        elif "clip" in model_type:
            from transformers import CLIPVisionConfig as Cfg, CLIPVisionModel as Model

            mean, std = CLIP_MEAN, CLIP_STD
        else:
            raise ValueError(f"vision tower {path!r}: model_type {model_type!r} is neither SigLIP nor CLIP")
        if load_weights:
            self.tower = Model.from_pretrained(path, local_files_only=True)
        else:
            self.tower = Model(Cfg.from_pretrained(path, local_files_only=True))
        pre = Path(path, "preprocessor_config.json")
        if pre.is_file():
            info = json.loads(pre.read_text())
            mean, std = tuple(info.get("image_mean", mean)), tuple(info.get("image_std", std))
        cfg = self.tower.config
        self.native_size = int(cfg.image_size)
        self.frozen = freeze
        if freeze:
            self.tower.requires_grad_(False)
            self.tower.eval()
        self.proj = nn.Linear(cfg.hidden_size, out_dim)
        self.pool_proj = nn.Linear(cfg.hidden_size, out_dim)
        init_weights(self.proj)
        init_weights(self.pool_proj)
        # Persistent: the statistics travel with the checkpoint.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PretrainedVisionTower":
        super().train(mode)
        if self.frozen:
            self.tower.eval()  # a frozen tower never uses dropout
        return self

    def save_config(self, directory: Path) -> None:
        """Write the tower's architecture (no weights): a checkpoint of a trainable tower
        stores the weights itself and then loads without the source directory."""
        self.tower.config.save_pretrained(str(directory))
        pre = {"image_mean": self.mean.flatten().tolist(), "image_std": self.std.flatten().tolist()}
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[-1] != self.native_size or images.shape[-2] != self.native_size:
            images = F.interpolate(images, size=(self.native_size,) * 2, mode="bilinear", align_corners=False)
        x = (images - self.mean) / self.std  # (B, 3, S, S)
        # A frozen tower runs without autograd, unless LoRA adapters inside it train (model/lora.py).
        trains = not self.frozen or any(p.requires_grad for p in self.tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            out = self.tower(pixel_values=x)
        tokens = self.proj(out.last_hidden_state)  # (B, N, C)
        pooled = self.pool_proj(out.pooler_output)  # (B, C)
        return tokens, pooled


class MultiCameraEncoder(nn.Module):
    """One shared encoder for all V views; (B, V, 3, H, W) -> (B, V*N, C), (B, C)."""

    def __init__(self, encoder: nn.Module, num_cameras: int, dim: int):
        super().__init__()
        self.encoder = encoder
        # True when the encoder takes a conditioning vector (FiLM CNN): see forward().
        self.conditioned = bool(getattr(encoder, "conditioned", False))
        self.num_cameras = num_cameras
        self.camera_embed = nn.Parameter(torch.randn(num_cameras, dim) * 0.02)
        # Concatenate-then-project keeps per-view information in the pooled vector.
        self.pool_proj = nn.Linear(num_cameras * dim, dim)
        init_weights(self.pool_proj)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, V, 3, S, S); cond (B, C_cond) for a conditioned encoder, else None."""
        B, V = images.shape[:2]
        if self.conditioned:
            if cond is None:
                raise ValueError("the vision encoder is FiLM-conditioned (cnn_film): pass cond (B, C)")
            # Views are folded into the batch b-major (b0v0, b0v1, ...): repeat cond to match.
            out = self.encoder(images.flatten(0, 1), cond.repeat_interleave(V, dim=0))
        elif cond is not None:
            raise ValueError("the vision encoder takes no conditioning (cnn_film is false or not a CNN)")
        else:
            out = self.encoder(images.flatten(0, 1))
        tokens, pooled = out  # (B*V, N, C), (B*V, C)
        N, C = tokens.shape[1:]
        tokens = tokens.view(B, V, N, C) + self.camera_embed[None, :, None, :]  # (B, V, N, C)
        pooled = pooled.view(B, V, C) + self.camera_embed[None]  # (B, V, C)
        return tokens.reshape(B, V * N, C), self.pool_proj(pooled.reshape(B, V * C))


def build_vision_encoder(config, num_cameras: int, load_pretrained: bool = True,
                         tower_path: str | None = None) -> MultiCameraEncoder:
    """The shared per-view encoder chosen by ``config.vision_encoder``, wrapped for ``num_cameras`` views."""
    c = config
    if c.vision_encoder == "cnn":
        enc = CNNEncoder(
            c.image_size, c.cnn_channels, c.d_model, c.cnn_coord_channels, c.cnn_pooling, c.cnn_keypoints,
            film_dim=c.d_model if c.cnn_film else 0,  # conditioned on the pooled instruction (B, C)
        )
    elif c.vision_encoder == "vit":
        enc = ViTEncoder(
            c.image_size, c.vit_patch_size, c.vit_width, c.vit_depth, c.vit_heads, c.d_model,
            c.vit_register_tokens, c.mlp_ratio, c.dropout,
        )
    else:
        enc = PretrainedVisionTower(tower_path or c.vision_tower_path, c.d_model, c.freeze_vision_tower, load_pretrained)
    return MultiCameraEncoder(enc, num_cameras, c.d_model)
