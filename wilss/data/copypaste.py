"""FMWISS's memory-based copy-paste (METHOD.md §5.4).

One bank per old class, each holding up to B instances: an image patch (3, h, w) in the training
normalisation and its binary mask (h, w), cut out at the bounding box of the class's pixels. At a
later step, ``paste`` puts a random instance of a random old class at a random place and scale on
each image of a batch with probability ``prob``; the returned map tells which pixels now show which
old class (its pixel label), so the teacher can learn old classes from them.

Step 0 fills the banks from ground-truth masks; a weak step t fills the banks of its new classes from
the trained student's predictions restricted to each image's labels ([recon]: the seed leaves open
how classes learned from image labels are archived).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class CopyPasteMemory:
    def __init__(self, per_class: int):
        self.per_class = per_class
        self.banks: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # channel -> [(patch, mask)]

    def __len__(self) -> int:
        return sum(len(b) for b in self.banks.values())

    @property
    def classes(self) -> list[int]:
        return sorted(c for c, b in self.banks.items() if b)

    def full(self, channel: int) -> bool:
        return len(self.banks.get(channel, [])) >= self.per_class

    def add(self, channel: int, image: torch.Tensor, mask: torch.Tensor, min_pixels: int = 4) -> bool:
        """Archive the pixels ``mask`` (H, W) bool of ``image`` (3, H, W) as an instance of ``channel``."""
        if self.full(channel) or int(mask.sum()) < min_pixels:
            return False
        ys, xs = torch.nonzero(mask, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        patch = image[:, y0:y1, x0:x1].detach().to("cpu", torch.float16).clone()
        self.banks.setdefault(channel, []).append((patch, mask[y0:y1, x0:x1].detach().cpu().clone()))
        return True

    def collect(self, images: torch.Tensor, labels: torch.Tensor, channels) -> None:
        """Fill banks from a batch: images (B, 3, H, W), labels (B, H, W) channel ids."""
        for c in channels:
            if self.full(c):
                continue
            for b in range(len(images)):
                if self.add(c, images[b], labels[b] == c) and self.full(c):
                    break

    def paste(self, images: torch.Tensor, prob: float, scale: tuple[float, float], generator: torch.Generator,
              per_image: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste instances onto a batch; returns (images (B, 3, H, W), pasted (B, H, W) long, 0 = none).

        Draws use ``generator`` (a CPU generator), so a fixed seed gives the same pastes.
        """
        out = images.clone()
        pasted = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long, device=images.device)
        classes = self.classes
        if not classes or prob <= 0:
            return out, pasted
        H, W = images.shape[-2:]
        for b in range(images.shape[0]):
            for _ in range(per_image):
                if torch.rand((), generator=generator) >= prob:
                    continue
                c = classes[int(torch.randint(len(classes), (), generator=generator))]
                bank = self.banks[c]
                patch, mask = bank[int(torch.randint(len(bank), (), generator=generator))]
                s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=generator))
                h = max(1, min(H, round(patch.shape[1] * s)))
                w = max(1, min(W, round(patch.shape[2] * s)))
                p = F.interpolate(patch[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
                m = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0].bool()
                y = int(torch.randint(H - h + 1, (), generator=generator))
                x = int(torch.randint(W - w + 1, (), generator=generator))
                m = m.to(images.device)
                region = out[b, :, y:y + h, x:x + w]
                region[:, m] = p.to(images.device, images.dtype)[:, m]
                pasted[b, y:y + h, x:x + w][m] = c
        return out, pasted

    # saved with the step's checkpoint (tensors only: loads with weights_only=True)
    def state(self) -> dict:
        return {"per_class": torch.tensor(self.per_class),
                "banks": {str(c): {"patches": [p for p, _ in b], "masks": [m for _, m in b]}
                          for c, b in self.banks.items()}}

    @classmethod
    def from_state(cls, state: dict) -> CopyPasteMemory:
        mem = cls(int(state["per_class"]))
        mem.banks = {int(c): list(zip(b["patches"], b["masks"])) for c, b in state["banks"].items()}
        return mem
