"""Where foundation weights come from: a pretrained tag, a local checkpoint file, ours, or none.

One rule for both wrappers (``foundation.clip_pretrained`` and ``foundation.vit_pretrained``):

- ``""``: random init, seeded (``RANDOM_SEED``) so that two processes build the same model and can
  share cached evidence;
- ``"synthetic"``: the tiny model shipped in ``wilss/foundation/weights/``, loaded exactly like a file;
- an existing file (or anything that looks like a path): a local checkpoint, a raw state dict or
  ``{"state_dict": ...}``, read with ``torch.load(weights_only=True)`` (or safetensors);
- anything else: a pretrained tag of the library (``openai``, ``dino``), downloaded by the library.

Every source has a ``digest`` that names the weights in cache keys: the sha256 of the file's bytes,
``tag:<tag>`` or ``random``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from wilss.atomic import sha256_file
from wilss.errors import ConfigError

RANDOM_SEED = 0
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")

_FILE_DIGESTS: dict[str, str] = {}  # path -> sha256 of its bytes, computed once per process


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (memoised per process and path: files are not expected to change)."""
    key = str(path)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        digest = _FILE_DIGESTS[key] = sha256_file(path)
    return digest


@dataclass(frozen=True)
class WeightsSource:
    """A resolved ``*_pretrained`` value: ``kind`` is "tag", "file" or "random"."""

    kind: str
    value: str  # the tag, the file path, or ""

    @property
    def digest(self) -> str:
        if self.kind == "file":
            return file_sha256(self.value)
        return f"tag:{self.value}" if self.kind == "tag" else "random"


def resolve_weights(value: str, *, key: str, model: str, tiny_model: str, shipped: Path) -> WeightsSource:
    """Classify a ``*_pretrained`` config value; ``key`` names the config key in error messages."""
    if value == "":
        return WeightsSource("random", "")
    if value == "synthetic":
        if model != tiny_model:
            raise ConfigError(f"{key}='synthetic' names the tiny weights of '{tiny_model}', not of '{model}': "
                              f"set the model to '{tiny_model}', or give a tag, a checkpoint file or ''")
        if not shipped.is_file():
            raise ConfigError(f"the shipped weights {shipped} are missing: reinstall wilss, or rebuild them "
                              "with `python -m wilss.foundation.pretrain_synthetic`")
        return WeightsSource("file", str(shipped))
    path = Path(value).expanduser()
    if path.is_file():
        return WeightsSource("file", str(path.resolve()))
    if "/" in value or "\\" in value or path.suffix in CHECKPOINT_SUFFIXES:
        raise ConfigError(f"{key}: checkpoint file {value} does not exist: give an existing file, a pretrained "
                          "tag, 'synthetic' or '' (random init)")
    return WeightsSource("tag", value)


def load_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """A checkpoint file's state dict: a raw one or ``{"state_dict": ...}`` / ``{"model": ...}``."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a TorchScript archive, a pickle with code, a truncated file, ...
        raise ConfigError(f"{key}: cannot read checkpoint {path} ({type(e).__name__}: {str(e)[:200]}): it must "
                          "be a state dict saved with torch.save (or a .safetensors file)") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{key}: {path} holds no state dict (a dict of tensors, or {{'state_dict': ...}})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, key: str,
              model_name: str) -> None:
    """``model.load_state_dict(state, strict=True)``, turning a mismatch into a ConfigError."""
    fix = "give the model name the checkpoint was trained with"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape mismatch
        raise ConfigError(f"{key}: checkpoint {path} does not fit model '{model_name}' "
                          f"({str(e).splitlines()[-1].strip()[:200]}): {fix}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"{key}: checkpoint {path} does not fit model '{model_name}' (missing "
                          f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}): {fix}")


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Build random-init models from a fixed seed without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """Silence the libraries' INFO/WARNING chatter ("no pretrained weights loaded") while building."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
