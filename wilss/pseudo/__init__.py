"""Pseudo labels (METHOD.md §5.1-§5.2): pure tensor functions from cached foundation-model evidence.

``masks``: normalise, binarise, fuse, label map. ``seeds``: seed sampling and seed attention.
``attention``: last-block attention rows at chosen tokens. ``online``: the whole per-step pipeline.
"""

from wilss.pseudo.attention import attention_at
from wilss.pseudo.masks import binarize, fuse, label_map, normalize_scores
from wilss.pseudo.online import PseudoMasks, pseudo_masks
from wilss.pseudo.seeds import sample_seeds, seed_attention

__all__ = ["PseudoMasks", "attention_at", "binarize", "fuse", "label_map", "normalize_scores",
           "pseudo_masks", "sample_seeds", "seed_attention"]
