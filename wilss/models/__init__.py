"""Models: the DeepLabV3 student (``create_student``)."""

from __future__ import annotations

from wilss.config import ModelConfig
from wilss.models.student import Student, build_backbone, set_bn_momentum


def create_student(cfg: ModelConfig, step_sizes: list[int]) -> Student:
    """The student for a task whose steps so far add ``step_sizes`` channels (bg counts in step 0)."""
    backbone, channels = build_backbone(cfg.backbone, cfg.output_stride, cfg.pretrained)
    model = Student(backbone, channels, step_sizes, cfg.aspp_channels, cfg.output_stride)
    set_bn_momentum(model.backbone, cfg.bn_momentum)
    return model


__all__ = ["Student", "create_student"]
