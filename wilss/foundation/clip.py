"""CLIP dense scorer on open_clip: class-text embeddings and dense image features (METHOD.md §5.1).

``M_init = F . T^T`` needs two things from a frozen CLIP:

- ``text_embeddings``: T, one L2-normalised row per class, from a prompt-template ensemble (embed every
  template, average the normalised embeddings, renormalise), as CLIP's zero-shot classifier;
- ``dense_features``: F, an L2-normalised joint-space vector per patch. Plain last-layer patch tokens
  localise poorly, so the default is MaskCLIP's route (Zhou et al., ECCV 2022): the last block keeps only
  its value path (``out_proj(v(ln_1(x)))``), skipping query-key attention, the residual and the MLP, then
  ``ln_post`` and ``proj``, on patch tokens. ``dense="tokens"`` is the plain route.

Two kinds of vision tower are supported:

- open_clip ``VisionTransformer`` (class token, learnable positional embedding, no attentional pooler),
  e.g. ViT-B-16; the positional embedding is resized when the input is not the model's size;
- a timm tower (``TimmModel``) with average pooling and a linear projection head, whose config declares
  the trunk's output stride as ``patch_size`` (e.g. the opt-in ``wilss-tiny-clip-rn``). Its image
  embedding is ``proj(mean over locations of trunk features)`` = mean over locations of
  ``proj(features)``, so the dense feature of a location is ``proj`` of its trunk feature (a CAM-like
  decomposition). MaskCLIP's route reduces to the same thing here: MaskCLIP keeps the per-token value /
  output projections of the pooling step and drops the token mixing; an average pool has no projection
  and its only mixing is the average itself. So both ``dense`` modes give these features.
"""

from __future__ import annotations

import difflib

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import resize_pos_embed
from open_clip.timm_model import TimmModel
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
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
from wilss.foundation.prompts import PROMPTS, prompt_name


def check_clip_model(name: str) -> None:
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"foundation.clip_model: unknown open_clip model '{name}': {hint}list them with "
                          f"open_clip.list_models() (the tiny synthetic one is '{tiny.TINY_CLIP_FCN}')")


def clip_weights(cfg: FoundationConfig) -> WeightsSource:
    check_clip_model(cfg.clip_model)
    src = resolve_weights(cfg.clip_pretrained, key="foundation.clip_pretrained", model=cfg.clip_model,
                          tiny_model=tiny.TINY_CLIP_FCN, shipped=tiny.CLIP_WEIGHTS)
    if src.kind == "tag" and src.value not in open_clip.list_pretrained_tags_by_model(cfg.clip_model):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.clip_model)) or "none"
        raise ConfigError(f"foundation.clip_pretrained: '{src.value}' is neither a file nor a pretrained tag of "
                          f"open_clip model '{cfg.clip_model}' (its tags: {tags}); or give 'synthetic' or ''")
    return src


def is_timm_tower(model_name: str) -> bool:
    return "timm_model_name" in open_clip.get_model_config(model_name)["vision_cfg"]


def clip_patch_size(model_name: str) -> int:
    """Patch side of an open_clip ViT, or output stride of a supported timm tower, read from its
    architecture config (no model is built)."""
    vision = open_clip.get_model_config(model_name)["vision_cfg"]
    if "timm_model_name" in vision:
        if vision.get("timm_pool", "avg") != "avg" or vision.get("timm_proj", "linear") != "linear" \
                or "patch_size" not in vision:
            raise ConfigError(f"foundation.clip_model '{model_name}' is not a ViT CLIP, nor a timm tower with "
                              "average pooling, a linear projection and its output stride given as patch_size: "
                              "the dense scorer needs one of those (e.g. ViT-B-16)")
        return int(vision["patch_size"])
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ConfigError(f"foundation.clip_model '{model_name}' is not a ViT CLIP: the dense scorer needs an "
                          "open_clip VisionTransformer tower (e.g. ViT-B-16) or an average-pooled timm tower")
    return int(vision["patch_size"])


def check_tower(name: str, visual: nn.Module) -> None:
    """Refuse vision towers whose dense features this module cannot compute."""
    if isinstance(visual, TimmModel):
        proj = getattr(visual.head, "proj", None)
        others = [n for n, m in visual.head.named_children() if n not in ("drop", "proj")]
        if not isinstance(proj, nn.Linear) or others or getattr(visual.trunk, "global_pool", None) != "avg":
            raise ConfigError(f"foundation.clip_model '{name}': its timm tower is not average pooling followed "
                              f"by a linear projection (head: {visual.head})")
        return
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
        raise ConfigError(f"foundation.clip_model '{name}' is not a plain ViT CLIP (its vision tower is "
                          f"{type(visual).__name__}): use an open_clip ViT such as ViT-B-16")


def build_clip(cfg: FoundationConfig, src: WeightsSource) -> nn.Module:
    """The open_clip model with the weights of ``src``, frozen, in eval mode, on the CPU."""
    name = cfg.clip_model
    if src.kind == "tag":
        # Checkpoints trained with QuickGELU (OpenAI's) need it in the architecture too.
        quick_gelu = bool(open_clip.get_pretrained_cfg(name, src.value).get("quick_gelu", False))
        try:
            with quiet_logging():
                model = open_clip.create_model(name, pretrained=src.value, force_quick_gelu=quick_gelu)
        except Exception as e:  # noqa: BLE001 - network, hub and file errors all mean: no weights
            raise ConfigError(f"could not download the open_clip weights '{name}' / '{src.value}' ({str(e)[:200]}):"
                              " download them elsewhere and pass the file path with "
                              "--set foundation.clip_pretrained=/path/to/open_clip_pytorch_model.bin") from None
    else:
        with seeded_init(), quiet_logging():
            model = open_clip.create_model(name, pretrained=None)
        if src.kind == "file":
            state = load_state_dict(src.value, "foundation.clip_pretrained")
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            resize_pos_embed(state, model)
            load_into(model, state, src.value, "foundation.clip_pretrained", name)
    check_tower(name, model.visual)
    return model.eval().requires_grad_(False)


def value_path(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: ``ls_1(out_proj(v(ln_1(x))))``, no attention, residual or MLP.

    x: (..., D) tokens in any layout (every op is per token). Returns the same shape.
    """
    attn: nn.MultiheadAttention = block.attn
    d = x.shape[-1]
    if attn.in_proj_weight is not None:
        w_v = attn.in_proj_weight[2 * d:]  # (D, D): rows of the packed q, k, v projection
    else:
        w_v = attn.v_proj_weight
    b_v = attn.in_proj_bias[2 * d:] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x), w_v, b_v)  # (B, L, D)
    return block.ls_1(attn.out_proj(v))


class ClipScorer:
    """A frozen open_clip model (ViT or average-pooled timm tower): ``text_embeddings`` (C, d) and ``dense_features`` (B, d, h, w).

    Outputs are float32, L2-normalised over d, on ``device``.
    """

    def __init__(self, cfg: FoundationConfig, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.weights = clip_weights(cfg)
        self._patch = clip_patch_size(cfg.clip_model)  # fails before building for unsupported towers
        self.model = build_clip(cfg, self.weights).to(self.device)
        self.tokenizer = open_clip.get_tokenizer(cfg.clip_model)
        visual = self.model.visual
        self.timm = isinstance(visual, TimmModel)
        if (cfg.dense == "maskclip" and not self.timm
                and not isinstance(visual.transformer.resblocks[-1], ResidualAttentionBlock)):
            raise ConfigError(f"foundation.dense='maskclip' needs the standard attention block in "
                              f"'{cfg.clip_model}': use foundation.dense=tokens for this model")
        pre = visual.preprocess_cfg
        self.mean = torch.tensor(pre["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"], device=self.device).view(1, 3, 1, 1)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature exp(t) (about 100 for OpenAI's models)."""
        return float(self.model.logit_scale.exp())

    @property
    def patch_size(self) -> int:
        """ViT patch side, or the timm trunk's output stride: one dense feature per patch_size^2 pixels."""
        return self._patch

    def grid(self, resolution: int) -> tuple[int, int]:
        return resolution // self.patch_size, resolution // self.patch_size

    @torch.no_grad()
    def text_embeddings(self, class_names: list[str]) -> torch.Tensor:
        """(C, d) prompt-ensemble text embeddings of ``class_names``, float32, L2-normalised."""
        templates = PROMPTS[self.cfg.prompts]
        rows = []
        for name in class_names:
            tokens = self.tokenizer([t.format(prompt_name(name)) for t in templates]).to(self.device)
            emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)  # (n_templates, d)
            rows.append(F.normalize(emb.mean(0), dim=0))
        return torch.stack(rows)

    def _positional(self, h: int, w: int) -> torch.Tensor:
        """(1 + h*w, width) positional embedding for an h x w patch grid (bicubic-resized if needed)."""
        pos = self.model.visual.positional_embedding
        gh, gw = self.model.visual.grid_size
        if (h, w) == (gh, gw):
            return pos
        if (h, w) not in self._pos_cache:
            patch = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # (1, width, gh, gw)
            patch = F.interpolate(patch.float(), size=(h, w), mode="bicubic", align_corners=False)
            patch = patch.to(pos.dtype).permute(0, 2, 3, 1).reshape(h * w, -1)
            self._pos_cache[(h, w)] = torch.cat([pos[:1], patch])
        return self._pos_cache[(h, w)]

    @torch.no_grad()
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, R, R) in [0, 1] -> (B, d, R/p, R/p) float32, L2-normalised over d."""
        x = (images.to(self.device, torch.float32) - self.mean) / self.std
        x = self._timm_dense(x) if self.timm else self._vit_dense(x)  # (B, d, h, w), not normalised
        expected = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        if tuple(x.shape[-2:]) != expected:
            raise ConfigError(f"foundation.clip_model '{self.cfg.clip_model}' gave a {tuple(x.shape[-2:])} feature "
                              f"grid for {tuple(images.shape[-2:])} px images, not {expected} (patch size "
                              f"{self.patch_size}): its config's patch_size is not the tower's stride")
        return F.normalize(x.float(), dim=1)

    def _timm_dense(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, R, R) normalised -> (B, d, h, w): the head's projection at every trunk location.

        The image embedding is proj(mean_hw f) = mean_hw proj(f) (the pool is linear), so these are the
        per-location terms of the image embedding, before any normalisation.
        """
        visual: TimmModel = self.model.visual
        f = visual.trunk.forward_features(x)  # (B, C, h, w)
        proj: nn.Linear = visual.head.proj
        return torch.einsum("bchw,dc->bdhw", f, proj.weight) + (
            proj.bias.view(1, -1, 1, 1) if proj.bias is not None else 0)

    def _vit_dense(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, R, R) normalised -> (B, d, R/p, R/p): MaskCLIP or last-layer patch tokens, projected."""
        visual: VisionTransformer = self.model.visual
        x = visual.conv1(x)  # (B, width, h, w)
        b, width, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, width)
        cls = visual.class_embedding.view(1, 1, width).expand(b, 1, width).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self._positional(h, w).to(x.dtype)  # (B, 1 + h*w, width)
        x = visual.ln_pre(visual.patch_dropout(x))
        blocks = visual.transformer.resblocks
        seq_first = not visual.transformer.batch_first  # older towers run (L, B, width)
        x = x.transpose(0, 1) if seq_first else x
        for block in blocks[:-1]:
            x = block(x)
        # The value path is token-wise, so it runs in either layout.
        x = value_path(blocks[-1], x) if self.cfg.dense == "maskclip" else blocks[-1](x)
        x = x.transpose(0, 1) if seq_first else x  # (B, 1 + h*w, width)
        x = visual.ln_post(x[:, 1:])  # patch tokens: (B, h*w, width)
        x = x @ visual.proj  # (B, h*w, d)
        return x.transpose(1, 2).reshape(b, -1, h, w)  # (B, d, h, w)

