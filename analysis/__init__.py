"""analysis: result rows (Parquet) -> tidy DataFrames, tables (Markdown, LaTeX, CSV) and figures.

Reads the datasets the sweeps write (``<storage>/results/sweep=<name>/trial=<id>/<task>/step=<t>.parquet``,
one row per (trial, step); DESIGN.md "Results"), from a local folder or any pyarrow filesystem URI.
Never imports torch or ray: it runs on a laptop next to the paper, not on the cluster.

    python -m analysis.report runs/sweeps/results --out runs/report

Modules, in the order the data flows: ``schema`` (column names, knobs, defaults), ``load`` (read and
validate), ``stats`` (means over seeds, paired bootstrap, importances), ``published`` (METHOD.md §6 as
data), ``tables`` and ``render`` (tables and their formats), ``figures``, ``report`` (the CLI).
"""

from analysis.load import ResultsError, final_rows, read_results

__all__ = ["ResultsError", "final_rows", "read_results"]
