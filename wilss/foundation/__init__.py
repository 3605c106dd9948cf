"""Frozen foundation models behind FMWISS's pseudo masks, and their per-image evidence cache.

- ``ClipScorer`` (open_clip): class-text embeddings and dense (MaskCLIP) features, for M_init (§5.1);
- ``VitEvidence`` (timm): a self-supervised ViT's last-block queries and keys, for seed attention (§5.2);
- ``FoundationEvidence``: both, computed once per image and cached on disk (§5.7).

Importing this package registers the tiny synthetic models (``wilss-tiny-clip`` with open_clip,
``wilss_tiny_vit`` with timm; see ``wilss.foundation.tiny``).
"""

from wilss.foundation import tiny  # noqa: F401  (registers the tiny models)
from wilss.foundation.clip import ClipScorer
from wilss.foundation.evidence import FoundationEvidence, read_image
from wilss.foundation.vit import VitEvidence

__all__ = ["ClipScorer", "FoundationEvidence", "VitEvidence", "read_image"]
