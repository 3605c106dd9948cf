"""Search spaces and grids, written in the config's own dotted names (ray-free).

A parameter is given as ``key=low:high`` (a number range; ``key=low:high:log`` for a log scale) or
``key=a,b,c`` (a choice). Everything is checked against the config before any trial starts: an
unknown key, a bound outside the knob's range, a value the knob does not accept, or a range on a
knob that is not a number raise ``ConfigError`` naming the key (``wilss.config.override`` decides
what a knob accepts, so the rules live in one place).

Conditional parameters: ``pseudo.n_seeds`` only acts when ``pseudo.fusion`` is not ``none`` (no seed
attention is computed then), so a search samples it only on those branches.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from wilss.config import Config, flatten, override
from wilss.errors import ConfigError

# child key -> (parent key, parent values under which the child acts)
CONDITIONS: dict[str, tuple[str, tuple]] = {"pseudo.n_seeds": ("pseudo.fusion", ("union", "intersection"))}

# The paper's knobs (METHOD.md §5.6, §5.8) and the ranges sweep.py searches by default.
PAPER_SPACE = ("fmwiss.lambda_dcl=0.01:1:log", "fmwiss.alpha=0:1", "fmwiss.beta=0.5:1",
               "pseudo.fusion=union,intersection,none", "pseudo.n_seeds=1:25")


@dataclass(frozen=True)
class Param:
    """One searched knob: a range (``low``..``high``, int or float) or a tuple of ``choices``."""

    key: str
    kind: str  # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for a value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.key} in [{self.low}, {self.high}]{' (log)' if self.log else ''}"


def knob_type(base: Config, key: str) -> type:
    """The type of knob ``key``; ConfigError naming the key when there is no such knob."""
    flat = flatten(base)
    if key not in flat:
        override(base, {key: ""})  # raises: unknown key (with a suggestion) or a section
    return type(flat[key])


def _value(base: Config, key: str, raw: Any) -> Any:
    """``raw`` converted and checked as the knob ``key`` takes it (ConfigError names the key)."""
    return flatten(override(base, {key: raw}))[key]


def parse_param(base: Config, text: str) -> Param:
    """``key=low:high[:log]`` or ``key=a,b,c`` -> a checked ``Param``."""
    key, sep, spec = text.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise ConfigError(f"a search-space entry is key=low:high or key=a,b,c; got {text!r}")
    typ = knob_type(base, key)
    if ":" in spec and "," not in spec:
        parts = spec.split(":")
        log = len(parts) == 3 and parts[2].strip() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise ConfigError(f"search space for '{key}': a range is low:high or low:high:log; got {spec!r}")
        if typ not in (int, float):
            raise ConfigError(f"search space for '{key}': a range needs a number knob, and '{key}' takes "
                              f"{typ.__name__}: give its values as {key}=a,b,c")
        low, high = (_value(base, key, p.strip()) for p in parts[:2])
        if not low < high:
            raise ConfigError(f"search space for '{key}': low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ConfigError(f"search space for '{key}': a log range needs low > 0; got {low}")
        return Param(key, "int" if typ is int else "float", low, high, log)
    values = tuple(_value(base, key, p.strip()) for p in spec.split(",") if p.strip())
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"search space for '{key}': give distinct values, e.g. {key}=a,b; got {spec!r}")
    return Param(key, "choice", choices=values)


def parse_space(base: Config, entries: list[str] | tuple[str, ...]) -> list[Param]:
    """Parse and check a whole space (later entries for the same key replace earlier ones)."""
    params = {p.key: p for p in (parse_param(base, e) for e in entries)}
    for child, (parent, acting) in CONDITIONS.items():
        if child in params and parent not in params and getattr_flat(base, parent) not in acting:
            raise ConfigError(f"search space for '{child}': it has no effect while {parent}="
                              f"{getattr_flat(base, parent)!r}; add {parent} to the space or set it")
    # parents before their children, so a define-by-run function can branch on them
    order = sorted(params.values(), key=lambda p: p.key in CONDITIONS)
    return order


def getattr_flat(cfg: Config, key: str) -> Any:
    return flatten(cfg)[key]


def check_point(base: Config, point: dict[str, Any]) -> Config:
    """The config of one trial; ConfigError (naming the key) when a value does not fit."""
    return override(base, point)


class DefineByRun:
    """Optuna define-by-run space over ``params`` with the conditions above (picklable)."""

    def __init__(self, params: list[Param]):
        self.params = params

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        keys = {p.key for p in self.params}
        for p in self.params:
            cond = CONDITIONS.get(p.key)
            if cond and cond[0] in keys and chosen[cond[0]] not in cond[1]:
                continue
            chosen[p.key] = p.suggest(trial)


def default_point(base: Config, params: list[Param]) -> dict[str, Any] | None:
    """The preset's values of the searched knobs (the paper defaults), as the first trial; None when
    one of them lies outside the space."""
    point: dict[str, Any] = {}
    keys = {p.key for p in params}
    for p in params:
        value = getattr_flat(base, p.key)
        cond = CONDITIONS.get(p.key)
        if cond and cond[0] in keys and point[cond[0]] not in cond[1]:
            continue
        if not p.contains(value):
            return None
        point[p.key] = value
    return point


# --------------------------------------------------------------------------------------------------
# grids (ablations)


def parse_grid(base: Config, grid: dict[str, list]) -> dict[str, list]:
    """``{"pseudo.n_seeds": [1, 3, 5]}`` with each value checked and converted as the knob takes it."""
    out = {}
    for key, values in grid.items():
        knob_type(base, key)
        values = [_value(base, key, v) for v in values]
        if not values:
            raise ConfigError(f"grid for '{key}' is empty")
        out[key] = values
    keys = list(out)
    for combo in itertools.product(*out.values()):  # cross-field rules (e.g. min <= max) per point
        check_point(base, dict(zip(keys, combo)))
    return out


def grid_size(grid: dict[str, list]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


def as_dict(params: list[Param]) -> list[dict]:
    return [dataclasses.asdict(p) for p in params]
