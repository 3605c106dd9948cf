"""Which tables and figures the rows support: the experiments inside a set of result rows.

Per sweep, the knobs that vary across its trials say what it was: none (a comparison of methods or
tasks), one of the paper's ablation groups (``schema.ABLATIONS``), another grid (any knobs, a full
factorial design), or a search (Optuna: the trials do not form a full grid). Sweeps that ablate the same
knobs are pooled into one block (e.g. the same ablation on two tasks run as two sweeps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.load import final_rows, varying_knobs
from analysis.schema import ABLATIONS, default_of
from analysis.stats import same_value


@dataclass
class Block:
    kind: str  # "ablation" or "search"
    name: str  # ABLATIONS key, "search_<sweep>" or the varied knobs joined by "+"
    knobs: tuple[str, ...]
    rows: pd.DataFrame  # every step of the block's trials
    sweeps: tuple[str, ...]

    @property
    def final(self) -> pd.DataFrame:
        return final_rows(self.rows)


def blocks(df: pd.DataFrame) -> list[Block]:
    found: dict[tuple[str, tuple[str, ...]], Block] = {}
    for sweep, rows in df.groupby("sweep", sort=True):
        fin = final_rows(rows)
        knobs = tuple(varying_knobs(fin))
        if not knobs:
            continue
        if _is_search(fin, knobs):
            found[("search", (sweep,))] = Block("search", f"search_{sweep or 'runs'}", knobs, rows, (sweep,))
            continue
        name = next((n for n, group in ABLATIONS.items() if set(knobs) == set(group)
                     or (n == "components" and set(knobs) <= set(group))), "+".join(knobs))
        key = ("ablation", knobs)
        if key in found:
            b = found[key]
            b.rows, b.sweeps = pd.concat([b.rows, rows], ignore_index=True), (*b.sweeps, sweep)
        else:
            found[key] = Block("ablation", name, knobs, rows, (sweep,))
    return list(found.values())


def _is_search(fin: pd.DataFrame, knobs: tuple[str, ...]) -> bool:
    """Not a full grid: fewer distinct points than the product of each knob's distinct values."""
    if len(knobs) < 2:
        return False
    points = fin[list(knobs)].astype(str).drop_duplicates()
    return len(points) < math.prod(points[k].nunique() for k in knobs)


def at_defaults(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows at the default setting, for the main comparison: per sweep, each knob that varies in
    that sweep is held at its config default (rows without the knob, from an older wilss, stay). A knob
    none of whose rows sits at its default is left free and returned, so the caller can say so."""
    kept, free = [], []
    for _, g in rows.groupby("sweep", sort=False):
        for k in varying_knobs(final_rows(g)):
            d = default_of(k)
            same = same_value(g[k], d) | g[k].isna().to_numpy() if d is not None else None
            if same is not None and (same & g[k].notna().to_numpy()).any():
                g = g[same]
            elif k not in free:
                free.append(k)
        kept.append(g)
    return (pd.concat(kept) if kept else rows), free

