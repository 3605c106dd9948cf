"""A table and its three formats: Markdown (the report), LaTeX booktabs (the paper), CSV (the numbers).

A ``Table`` holds display strings (``rows``, already formatted "73.6 ± 0.4") for Markdown and LaTeX and
a tidy numeric frame (``data``: one row per cell group, means/stds/n in percent) for CSV, so the CSV
never has to be parsed back from strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

MISSING = "–"  # a cell with no run (or no published value)


@dataclass
class Table:
    name: str  # file stem: tables/<name>.{md,tex,csv}
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    data: pd.DataFrame
    # (label, first column, number of columns) spanning header groups, e.g. ("disjoint", 2, 4)
    groups: list[tuple[str, int, int]] = field(default_factory=list)
    rules: list[int] = field(default_factory=list)  # a rule above these row indices (e.g. the published block)
    n_labels: int = 1  # leading label columns (left-aligned in LaTeX)

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {ext: folder / f"{self.name}.{ext}" for ext in ("md", "tex", "csv")}
        paths["md"].write_text(f"**{self.title}.** {self.caption}\n\n{to_markdown(self)}\n")
        paths["tex"].write_text(to_latex(self))
        self.data.to_csv(paths["csv"], index=False)
        return paths


def fmt(mean: float, std: float = math.nan, n: int = 1, digits: int = 1) -> str:
    """'73.6 ± 0.4' (n > 1), '73.6' (one repeat: no spread to show), '–' (no value)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    if n > 1 and std is not None and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def fmt_value(v) -> str:
    """A knob value as a table cell: 0.1, 9, union, ✓ / ✗ for switches."""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return "✓" if v else "✗"
    if isinstance(v, float):
        return f"{v:g}"
    return MISSING if v is None else str(v)


def to_markdown(t: Table) -> str:
    header = list(t.header)
    for label, first, span in t.groups:
        for i in range(first, first + span):
            header[i] = f"{label} {header[i]}"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in t.rows]
    return "\n".join(lines)


_TEX = {"±": r"$\pm$", "λ": r"$\lambda$", "α": r"$\alpha$", "β": r"$\beta$", "×": r"$\times$", "⋆": r"$^\star$",
        "✓": r"\checkmark", "✗": "--", "–": "--", "≥": r"$\geq$", "∪": r"$\cup$", "∩": r"$\cap$", "·": r"$\cdot$",
        "†": r"$^\dagger$", "Δ": r"$\Delta$"}


def tex_escape(s: str) -> str:
    out = []
    for ch in str(s):
        if ch in "\\&%$#_{}":
            out.append({"\\": r"\textbackslash{}"}.get(ch, "\\" + ch))
        elif ch in "~^":
            out.append({"~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}[ch])
        else:
            out.append(_TEX.get(ch, ch))
    return "".join(out)


def to_latex(t: Table) -> str:
    """A booktabs ``table`` float: first column left, the others right; groups as \\cmidrule spans."""
    cols = "l" * t.n_labels + "r" * (len(t.header) - t.n_labels)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{cols}}}", r"\toprule"]
    if t.groups:
        cells, rules, pos = [], [], 0
        for label, first, span in t.groups:
            cells += [""] * (first - pos) + [rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(label)}}}"]
            rules.append(rf"\cmidrule(lr){{{first + 1}-{first + span}}}")
            pos = first + span
        cells += [""] * (len(t.header) - pos)
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
    lines += [" & ".join(tex_escape(h) for h in t.header) + r" \\", r"\midrule"]
    for i, r in enumerate(t.rows):
        if i in t.rules:
            lines.append(r"\midrule")
        lines.append(" & ".join(tex_escape(c) for c in r) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{\textbf{{{tex_escape(t.title)}.}} {tex_escape(t.caption)}}}",
              rf"\label{{tab:{t.name}}}", r"\end{table}", ""]
    return "\n".join(lines)
