"""Methods: what one incremental step trains. One front door, ``create_method(name)``.

A method turns a batch into a dict of named loss terms (``"loss"`` is the total the engine steps on),
says how its training labels are remapped and how logits become a prediction. Methods never see DDP,
Ray or the optimiser loop: the engine owns those.
"""

from __future__ import annotations

from wilss.errors import ConfigError
from wilss.methods.base import Method, StepContext
from wilss.methods.dkd import DKD, DKDM
from wilss.methods.finetune import Finetune, Joint
from wilss.methods.fmwiss import FMWISS
from wilss.methods.mib import MiB
from wilss.methods.wilson import WILSON

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


register(Finetune)
register(Joint)
register(DKD)
register(DKDM)
register(MiB)
register(WILSON)
register(FMWISS)


def create_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]()


__all__ = ["METHODS", "Method", "StepContext", "create_method", "register"]
