"""The measurement dataset: one Parquet file, one row per (architecture, device, workload,
role), rewritten atomically after every sample (write to a temporary file, then rename),
so a crash or Ctrl-C never leaves it unreadable and loses at most the sample in flight.
Rows are only ever added. The schema version is stored in the file's metadata and in a
column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from latprune.errors import LatpruneError
from latprune.files import FileLock, atomic_file

SCHEMA_VERSION = 2  # 2: paired timing (ratio to the reference, raw and baseline columns)
META_KEY = b"latprune_profile_schema"
STEPS = ("prefill_ms", "decode_ms")  # the timed metrics; e2e_ms is derived from them
TRAINING_ROLES = ("sample", "refine")  # rows a predictor learns from (plus the reference)
REPEAT_ROLES = ("verify", "retest")  # re-timings: not rows of their own, they enter their architecture's median timing
HETERO_ROLE = "per-layer"  # heterogeneous architectures (profile --plan per-layer): held out to check composition


def stat_column(metric: str, stat: str) -> str:
    """A profile column holding one statistic of a metric: ("decode_ms", "raw_ms") -> "decode_raw_ms"."""
    return f"{metric.removesuffix('_ms')}_{stat}"


def default_profile(device: str) -> Path:
    """Where `profile` records a device's rows unless told otherwise."""
    return Path("profiles") / f"{device}.parquet"


def baseline(frame: pd.DataFrame, **match: Any) -> dict[str, float] | None:
    """The profile's scale for the rows matching `match` (e.g. workload, model_hash): the
    parent's latency in their first successful reference row (timed alone, so its recorded
    and raw figures agree; later reference rows record this scale too). Every paired row's
    latency is its ratio to the parent x this; None before any reference was timed."""
    refs = _matching(frame, role="reference", status="ok", **match)
    if refs.empty:
        return None
    return {m: float(refs[m].iloc[0]) for m in STEPS}


def baseline_host(frame: pd.DataFrame, **match: Any) -> dict[str, str] | None:
    """The host fingerprint of the reference row that fixes the `baseline` of the rows
    matching `match`; None before any reference was timed."""
    refs = _matching(frame, role="reference", status="ok", **match)
    return None if refs.empty else json.loads(refs.host_json.iloc[0])


def usable_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Measured sample rows and a search's refinement rows (candidates timed near its
    budget), without failed and drift-flagged ones (counted)."""
    if frame.empty:
        raise LatpruneError("the profile has no rows; run 'latprune profile' first")
    samples = frame[frame.role.isin(TRAINING_ROLES)]
    failed = samples.status != "ok"
    drifted = (~failed) & samples.drift_flag.astype(bool)
    counts = {f"{role}_rows": int((samples.role == role).sum()) for role in TRAINING_ROLES}
    counts.update(failed=int(failed.sum()), drift_flagged=int(drifted.sum()))
    ok = samples[~failed & ~drifted]
    counts["used"] = int(len(ok))
    return ok, counts


def timed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Every good timing of a sub-network: samples, refinement, verification and re-test rows
    (what an architecture's median timing is taken over)."""
    return frame[frame.role.isin((*TRAINING_ROLES, *REPEAT_ROLES)) & (frame.status == "ok")
                 & ~frame.drift_flag.astype(bool)]


def reference_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per workload: the parent shape at the profile's baseline (the largest
    architecture is where tree models extrapolate worst, so fit trains on it too)."""
    refs = _matching(frame, role="reference", status="ok")
    if refs.empty:
        return refs
    rows = []
    for workload, group in refs.groupby("workload"):
        row = group.iloc[[0]].copy()
        scale = baseline(frame, workload=workload)
        row[list(STEPS)] = [scale[m] for m in STEPS]
        row["e2e_ms"] = row.prefill_ms + row.generate * row.decode_ms
        rows.append(row)
    return pd.concat(rows)


def _matching(frame: pd.DataFrame, **match: Any) -> pd.DataFrame:
    """Rows whose columns equal all `match` values (none when a column is missing)."""
    for column, value in match.items():
        if frame.empty or column not in frame:
            return frame.iloc[0:0]
        frame = frame[frame[column] == value]
    return frame


def read_profile(path: str | Path) -> pd.DataFrame:
    """All rows of a profile file (empty frame when it does not exist).

    The file is read whole through one open handle: a profiler replacing it meanwhile
    (atomic rename) cannot mix two versions, as pyarrow's path reader can (it takes the
    size from one version and the bytes from the next)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        raise LatpruneError(f"profile '{path}' is a directory; pass a .parquet file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return pd.DataFrame()
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise LatpruneError(f"profile '{path}' is not a readable Parquet file ({exc}); move it away") from None
    version = (table.schema.metadata or {}).get(META_KEY)
    if version != str(SCHEMA_VERSION).encode():
        found = version.decode() if isinstance(version, bytes) else "none"
        raise LatpruneError(f"profile '{path}' has schema version {found}, this latprune reads {SCHEMA_VERSION}; "
                            "move it away (or use another --out) and profile again")
    return table.to_pandas()


def write_profile(path: str | Path, frame: pd.DataFrame) -> None:
    """Atomically replace `path` with `frame` (schema version in the metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: str(SCHEMA_VERSION).encode()})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


CONCURRENCY = ("two processes would each rewrite the file and lose each other's rows, and two timings at once on "
               "one machine disturb each other: wait for it to finish, or profile into another file on another machine")


class ProfileWriter:
    """Appends rows to a profile file, one atomic rewrite per row. Holds an exclusive lock
    beside the file (`PATH.lock`) until `close`, so a second writer is refused in one line
    instead of silently dropping rows (each writer rewrites the whole file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix != ".parquet":
            raise LatpruneError(f"profile '{path}' must be a .parquet file")
        self._lock = FileLock(self.path, CONCURRENCY)
        try:
            self.frame = read_profile(self.path)  # under the lock: another writer may have just finished
        except LatpruneError:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the lock (also released when the process ends, however it ends)."""
        self._lock.release()

    def __enter__(self) -> ProfileWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, row: dict[str, Any]) -> None:
        new = pd.DataFrame([{"schema_version": SCHEMA_VERSION, **row}])
        self.frame = new if self.frame.empty else pd.concat([self.frame, new], ignore_index=True)
        write_profile(self.path, self.frame)

    def rows(self, **match: Any) -> pd.DataFrame:
        """Rows whose columns equal all `match` values."""
        return _matching(self.frame, **match)
