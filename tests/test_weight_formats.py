"""The offline path loads each library's own checkpoint format, strictly, and refuses a wrong file.

Real runs on a machine without internet pass local files: torchvision's ResNet-101 ``.pth``, open_clip's
ViT-B-16 checkpoint, timm's (DINO) ViT-B/16 as ``.pth`` or ``.safetensors``. Each file here is written from
a random-init model built by the library itself (never by hand), then loaded through the config value a
user would set; a file of another architecture or a truncated one is refused with one line naming the
file and the mismatch, before any training.
"""

from __future__ import annotations

import open_clip
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from wilss.config import FoundationConfig
from wilss.errors import ConfigError
from wilss.foundation.clip import ClipScorer
from wilss.foundation.vit import VitEvidence
from wilss.models.student import build_backbone

SMALL = {"clip_model": "ViT-B-16", "clip_pretrained": "", "vit_model": "vit_base_patch16_224",
         "vit_pretrained": "", "resolution": 224, "prompts": "short"}


def _image() -> torch.Tensor:
    return torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_torchvision_resnet101_pth(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet101()
    path = tmp_path / "resnet101-63fe2227.pth"
    torch.save(reference.state_dict(), path)
    backbone, channels = build_backbone("resnet101", output_stride=16, pretrained=str(path))
    assert channels == 2048
    loaded = dict(backbone.named_parameters())
    for name, tensor in reference.named_parameters():
        if not name.startswith("fc."):  # the backbone keeps no classifier
            assert torch.equal(loaded[name], tensor), name
    # another architecture, and a truncated file: refused, naming the file
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(ConfigError, match="resnet50.pth does not fit the backbone"):
        build_backbone("resnet101", pretrained=str(tmp_path / "resnet50.pth"))
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ConfigError, match="cannot read .*cut.pth"):
        build_backbone("resnet101", pretrained=str(tmp_path / "cut.pth"))


def test_open_clip_vit_b16_checkpoint(tmp_path):
    torch.manual_seed(2)
    reference = open_clip.create_model("ViT-B-16").eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    scorer = ClipScorer(FoundationConfig(**{**SMALL, "clip_pretrained": str(path)}))
    state = scorer.model.state_dict()
    assert set(state) == set(reference.state_dict())
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
    with torch.no_grad():
        expected = reference.encode_image(_image(), normalize=True)
        pooled = scorer.model.encode_image(_image(), normalize=True)
    torch.testing.assert_close(pooled, expected)
    # the image tower of another architecture: refused with the file and the mismatch
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), tmp_path / "vit-b-32.bin")
    with pytest.raises(ConfigError, match="vit-b-32.bin does not fit model 'ViT-B-16'"):
        ClipScorer(FoundationConfig(**{**SMALL, "clip_pretrained": str(tmp_path / "vit-b-32.bin")}))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_dino_vit_b16(tmp_path, suffix):
    torch.manual_seed(3)
    reference = timm.create_model("vit_base_patch16_224", num_classes=0).eval()
    path = tmp_path / f"dino_vitbase16_pretrain{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    vit = VitEvidence(FoundationConfig(**{**SMALL, "vit_pretrained": str(path)}))
    q, k, grid = vit.qk(_image())
    assert q.shape == (1, 12, 196, 64) and k.shape == q.shape and tuple(grid) == (14, 14)
    again = VitEvidence(FoundationConfig(**{**SMALL, "vit_pretrained": str(path)}))
    assert torch.equal(again.qk(_image())[0], q)
    assert not torch.allclose(VitEvidence(FoundationConfig(**SMALL)).qk(_image())[0], q)  # not random init
    # a ViT-S/16 file for the ViT-B/16 model, and a truncated file: refused with the file named
    torch.save(timm.create_model("vit_small_patch16_224", num_classes=0).state_dict(), tmp_path / "vits16.pth")
    with pytest.raises(ConfigError, match="vits16.pth does not fit model 'vit_base_patch16_224'"):
        VitEvidence(FoundationConfig(**{**SMALL, "vit_pretrained": str(tmp_path / "vits16.pth")}))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ConfigError, match=f"cannot read checkpoint .*cut{suffix}"):
        VitEvidence(FoundationConfig(**{**SMALL, "vit_pretrained": str(cut)}))
