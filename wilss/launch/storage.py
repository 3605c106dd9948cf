"""Where a sweep keeps its things: one root, a local path or any pyarrow filesystem URI.

```
<storage>/
  results/sweep=<sweep>/trial=<trial_id>/<task>/step=<t>.parquet   one row per (trial, step)
  ray/<sweep>/                   the Tune experiment (restored by --resume)
  ray/<sweep>-train/<trial>/step<t>/   the Ray Train run of one step (workers >= 1)
  sweeps/<sweep>.json            what the sweep was started with (a rerun must match it)
  artifacts/<key>/               shared step artifacts (wilss.artifacts.StepStore), local roots only
  logs/<sweep>/<trial_id>.log    each trial's training log, local roots only
```

Rows are written by the trial itself, atomically (temp file + rename on a local or NFS root; one
PUT on an object store), so a row either exists whole or not at all, and the row of (trial, step)
is also the marker that the step is done. The row files carry every column (``sweep``, ``trial_id``
and ``task`` included), so the task folder is a plain name, not a hive ``key=value`` one, and
``pandas.read_parquet(".../results/sweep=<sweep>")`` reads a sweep as it is (adding a ``trial``
column). Reading the whole ``results/`` folder with hive partitioning needs the partition types
(``partition_schema``: ``sweep`` is a column too), or one file at a time (``read_rows``).
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from wilss.atomic import check_writable_dir, write_text
from wilss.errors import ConfigError
from wilss.results import write_row

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_name(kind: str, name: str) -> str:
    """Sweep names, trial ids and task names become folder names: keep them plain."""
    if not _SAFE.match(name):
        raise ConfigError(f"{kind} '{name}' may hold only letters, digits and . _ + - (it names a folder)")
    return name


@dataclass(frozen=True)
class Storage:
    """A root folder on a pyarrow filesystem. ``uri`` is what Ray gets as ``storage_path``."""

    uri: str

    @classmethod
    def of(cls, where: str | Path) -> Storage:
        where = str(where)
        if "://" not in where:
            where = str(Path(where).expanduser().resolve())
        return cls(where.rstrip("/") or "/")

    @property
    def local(self) -> bool:
        return "://" not in self.uri or self.uri.startswith("file://")

    @property
    def fs_and_root(self) -> tuple[pafs.FileSystem, str]:
        if not self.local:
            return pafs.FileSystem.from_uri(self.uri)
        return pafs.LocalFileSystem(), self.uri.removeprefix("file://")

    def path(self, *parts: str) -> str:
        """A path inside the root, as the filesystem names it (no scheme)."""
        return "/".join([self.fs_and_root[1], *parts])

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def local_path(self, *parts: str) -> Path:
        if not self.local:
            raise ValueError(f"{self.uri} is not a local folder")
        return Path(self.path(*parts))

    def check_writable(self, flag: str = "--storage") -> None:
        """WilssError unless a local root can be written (object stores are left to their first write)."""
        if self.local:
            check_writable_dir(self.local_path(), flag)

    # ----------------------------------------------------------------------------------------------
    # files

    def exists(self, path: str) -> bool:
        fs, _ = self.fs_and_root
        return fs.get_file_info(path).type == pafs.FileType.File

    def read_bytes(self, path: str) -> bytes:
        fs, _ = self.fs_and_root
        with fs.open_input_stream(path) as f:
            return f.readall()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomic: rename on a local root; an object store's PUT is atomic by itself."""
        if self.local:
            from wilss.atomic import atomic_path

            with atomic_path(Path(path)) as tmp:
                tmp.write_bytes(data)
            return
        fs, _ = self.fs_and_root
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)

    def list_files(self, path: str, suffix: str = "") -> list[str]:
        fs, _ = self.fs_and_root
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
                      and not i.base_name.startswith("."))


# --------------------------------------------------------------------------------------------------
# result rows


def row_path(storage: Storage, sweep: str, task: str, trial_id: str, step: int) -> str:
    return storage.path("results", f"sweep={sweep}", f"trial={trial_id}", task, f"step={step}.parquet")


def write_row_at(storage: Storage, path: str, row: dict) -> None:
    if storage.local:
        write_row(row, Path(path))
        return
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame([row]).to_parquet(buf, index=False)
    storage.write_bytes(path, buf.getvalue())


def read_row_at(storage: Storage, path: str) -> dict | None:
    """The row at ``path``, or None when absent (or unreadable: then the step is redone)."""
    import pandas as pd

    if not storage.exists(path):
        return None
    try:
        return pd.read_parquet(io.BytesIO(storage.read_bytes(path))).iloc[0].to_dict()
    except (OSError, ValueError, IndexError, pa.ArrowException):
        return None


def read_rows(storage: Storage, sweep: str | None = None):
    """Every row of one sweep (or of all sweeps) as a DataFrame, ordered by task, trial and step."""
    import pandas as pd

    base = storage.path("results", f"sweep={sweep}") if sweep else storage.path("results")
    frames = [pd.read_parquet(io.BytesIO(storage.read_bytes(f))) for f in storage.list_files(base, ".parquet")]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    keys = [k for k in ("sweep", "task", "trial_id", "step") if k in df.columns]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def partition_schema() -> pa.Schema:
    """The hive partition fields of the results folder, typed as the row files type ``sweep``."""
    return pa.schema([("sweep", pa.large_string()), ("trial", pa.large_string())])


# --------------------------------------------------------------------------------------------------
# sweep records


def sweep_record_path(storage: Storage, sweep: str) -> str:
    return storage.path("sweeps", f"{sweep}.json")


def read_sweep_record(storage: Storage, sweep: str) -> dict | None:
    path = sweep_record_path(storage, sweep)
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None


def write_sweep_record(storage: Storage, sweep: str, record: dict) -> None:
    data = json.dumps(record, indent=1, sort_keys=True, default=str)
    path = sweep_record_path(storage, sweep)
    if storage.local:
        write_text(Path(path), data)
    else:
        storage.write_bytes(path, data.encode())


def default_artifacts(storage: Storage) -> Path:
    """The step-artifact folder: under a local root; else a per-node cache (pass --artifacts with a
    folder all nodes mount to share step artifacts across nodes)."""
    if storage.local:
        return storage.local_path("artifacts")
    from wilss.data.datasets import default_cache_dir

    return default_cache_dir() / "artifacts"


def log_dir(storage: Storage, sweep: str) -> Path:
    if storage.local:
        return storage.local_path("logs", sweep)
    from wilss.data.datasets import default_cache_dir

    return default_cache_dir() / "logs" / sweep


def environ_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
