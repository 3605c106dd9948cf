"""Self-supervised ViT evidence on timm: the last block's queries and keys (METHOD.md §5.2, §5.7).

FMWISS refines CLIP's mask with the last self-attention block of a frozen DINO / iBOT ViT, queried at
seed points. Attention at any seed set is one small matmul given that block's queries and keys, so we
keep (q, k) of the patch tokens and let ``wilss.pseudo.attention.attention_at`` do the rest: softmax over
the *patch* keys (class and register tokens are dropped), which equals the model's own attention row
restricted to patch keys and renormalised (tests/test_foundation.py checks this against the model).

The model is built with fused attention off (so its softmax can be hooked, and the parity test can
compare) and ``dynamic_img_size`` on (so any resolution works, the positional embedding is resampled).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator

import timm
import torch
from timm.layers import set_fused_attn, use_fused_attn
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from wilss.config import FoundationConfig
from wilss.errors import ConfigError
from wilss.foundation import tiny
from wilss.foundation.checkpoints import (
    WeightsSource,
    load_into,
    load_state_dict,
    quiet_logging,
    resolve_weights,
    seeded_init,
)


def check_vit_model(name: str) -> str:
    """The architecture part of ``name`` (``vit_base_patch16_224.dino`` -> ``vit_base_patch16_224``)."""
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"foundation.vit_model: unknown timm model '{name}': {hint}list them with "
                          f"timm.list_models() (the tiny synthetic one is '{tiny.TINY_VIT}')")
    return arch


def vit_weights(cfg: FoundationConfig) -> WeightsSource:
    arch = check_vit_model(cfg.vit_model)
    src = resolve_weights(cfg.vit_pretrained, key="foundation.vit_pretrained", model=arch,
                          tiny_model=tiny.TINY_VIT, shipped=tiny.VIT_WEIGHTS)
    if src.kind == "tag" and f"{arch}.{src.value}" not in timm.list_pretrained(f"{arch}.*"):
        tags = ", ".join(n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")) or "none"
        raise ConfigError(f"foundation.vit_pretrained: '{src.value}' is neither a file nor a pretrained tag of "
                          f"timm model '{arch}' (its tags: {tags}); or give 'synthetic' or ''")
    return src


@contextlib.contextmanager
def _unfused_attention() -> Iterator[None]:
    """timm picks fused attention when a block is built; build with the plain softmax path instead."""
    previous = use_fused_attn()
    set_fused_attn(False)
    try:
        yield
    finally:
        set_fused_attn(previous)


def build_vit(cfg: FoundationConfig, src: WeightsSource) -> nn.Module:
    """The timm ViT with the weights of ``src``, no classifier, frozen, in eval mode, on the CPU.

    A tag in ``vit_model`` (``vit_base_patch16_224.dino``) picks that variant's preprocessing even for
    random init or a local file; a tag in ``vit_pretrained`` also downloads its weights.
    """
    arch = check_vit_model(cfg.vit_model)
    kwargs = {"num_classes": 0, "dynamic_img_size": True}
    with _unfused_attention(), quiet_logging():
        if src.kind == "tag":
            try:
                model = timm.create_model(f"{arch}.{src.value}", pretrained=True, **kwargs)
            except Exception as e:  # noqa: BLE001 - network, hub and file errors all mean: no weights
                raise ConfigError(f"could not download the timm weights '{arch}.{src.value}' ({str(e)[:200]}): "
                                  "download them elsewhere and pass the file path with "
                                  "--set foundation.vit_pretrained=/path/to/model.safetensors") from None
        else:
            with seeded_init():
                model = timm.create_model(cfg.vit_model, pretrained=False, **kwargs)
            if src.kind == "file":
                state = load_state_dict(src.value, "foundation.vit_pretrained")
                state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
                         if not k.startswith("head.")}  # we drop the classifier
                if isinstance(model, VisionTransformer):
                    state = checkpoint_filter_fn(state, model)  # pos-embed resize, older layouts
                load_into(model, state, src.value, "foundation.vit_pretrained", cfg.vit_model)
    last = model.blocks[-1] if hasattr(model, "blocks") else None
    attn = getattr(last, "attn", None)
    if not (hasattr(model, "patch_embed") and hasattr(attn, "qkv") and hasattr(attn, "num_heads")):
        raise ConfigError(f"foundation.vit_model '{cfg.vit_model}' is not a plain timm ViT (blocks with a fused "
                          "qkv attention): use a vit_* model such as vit_base_patch16_224")
    return model.eval().requires_grad_(False)


class VitEvidence:
    """A frozen self-supervised timm ViT; ``qk`` returns its last block's patch queries and keys."""

    def __init__(self, cfg: FoundationConfig, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.weights = vit_weights(cfg)
        self.model = build_vit(cfg, self.weights).to(self.device)
        data = timm.data.resolve_data_config({}, model=self.model)
        self.mean = torch.tensor(data["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(data["std"], device=self.device).view(1, 3, 1, 1)

    def grid(self, resolution: int) -> tuple[int, int]:
        return tuple(self.model.patch_embed.dynamic_feat_size((resolution, resolution)))

    @torch.no_grad()
    def qk(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """images: (B, 3, R, R) in [0, 1] -> q, k: (B, heads, h*w, dh) float32 for the patch tokens, and (h, w).

        ``softmax(q_s . k^T / sqrt(dh))`` is the last block's attention of patch s over the patch tokens;
        the model's own ``attn.scale`` is folded into q when it is not dh ** -0.5.
        """
        m = self.model
        x = (images.to(self.device, torch.float32) - self.mean) / self.std
        grid = tuple(m.patch_embed.dynamic_feat_size(tuple(images.shape[-2:])))
        # As VisionTransformer.forward_features, up to the last block.
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))  # (B, prefix + h*w, D)
        for block in m.blocks[:-1]:
            x = block(x)
        last = m.blocks[-1]
        attn = last.attn
        y = last.norm1(x)
        b, n, _ = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, N, dh)
        scale = float(getattr(attn, "scale", attn.head_dim ** -0.5))
        q = q * (scale * attn.head_dim ** 0.5)  # a no-op for standard blocks
        p = m.num_prefix_tokens
        return q[:, :, p:].float(), k[:, :, p:].float(), grid


def vit_grid(cfg: FoundationConfig) -> tuple[int, int]:
    """(h, w) patch grid of ``cfg.vit_model`` at ``cfg.resolution``, from a weightless (meta) build."""
    check_vit_model(cfg.vit_model)
    with torch.device("meta"), quiet_logging():
        model = timm.create_model(cfg.vit_model, pretrained=False, num_classes=0, dynamic_img_size=True)
    patch = model.patch_embed.patch_size[0]
    if cfg.resolution % patch:
        raise ConfigError(f"foundation.resolution={cfg.resolution} is not a multiple of the patch size {patch} of "
                          f"'{cfg.vit_model}': use {cfg.resolution // patch * patch or patch}")
    return tuple(model.patch_embed.dynamic_feat_size((cfg.resolution, cfg.resolution)))
