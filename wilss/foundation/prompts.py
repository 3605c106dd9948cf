"""Prompt templates for the class-text embeddings (METHOD.md §5.1): CLIP's ImageNet ensemble or a short set.

``IMAGENET`` is the 80-template ensemble of the CLIP paper's ImageNet zero-shot evaluation; ``SHORT`` a
handful of plain photo prompts, for small text towers trained on few caption forms. Dataset class
names written as one word (VOC's ``pottedplant``) are spelled out first (``prompt_name``).
"""

from __future__ import annotations

IMAGENET: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
assert len(IMAGENET) == 80

SHORT: tuple[str, ...] = (
    "a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "a drawing of a {}.", "an image of a {}.",
)

PROMPTS = {"imagenet": IMAGENET, "short": SHORT}

# The class name of the background prompt (``foundation.score_norm=softmax_bg``), in the templates above.
BACKGROUND = "background"

# Dataset spellings that are not words (VOC, COCO-Stuff ids); anything else only loses '_' and '-'.
SPELLED_OUT = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


def prompt_name(name: str) -> str:
    """How a dataset class name is written inside a prompt."""
    return SPELLED_OUT.get(name, name.replace("_", " ").replace("-", " "))
