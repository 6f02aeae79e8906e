"""The measurement dataset: one Parquet file, one row per (architecture, device, workload,
role), rewritten atomically after every sample (write to a temporary file, then rename),
so a crash or Ctrl-C never leaves it unreadable and loses at most the sample in flight.
Rows are only ever added. The schema version is stored in the file's metadata and in a
column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from latprune.errors import LatpruneError
from latprune.files import atomic_file

SCHEMA_VERSION = 2  # 2: paired timing (ratio to the reference, raw and baseline columns)
META_KEY = b"latprune_profile_schema"


def read_profile(path: str | Path) -> pd.DataFrame:
    """All rows of a profile file (empty frame when it does not exist).

    The file is read whole through one open handle: a profiler replacing it meanwhile
    (atomic rename) cannot mix two versions, as pyarrow's path reader can (it takes the
    size from one version and the bytes from the next)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
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


class ProfileWriter:
    """Appends rows to a profile file, one atomic rewrite per row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.frame = read_profile(self.path)

    def append(self, row: dict[str, Any]) -> None:
        new = pd.DataFrame([{"schema_version": SCHEMA_VERSION, **row}])
        self.frame = new if self.frame.empty else pd.concat([self.frame, new], ignore_index=True)
        write_profile(self.path, self.frame)

    def rows(self, **match: Any) -> pd.DataFrame:
        """Rows whose columns equal all `match` values."""
        frame = self.frame
        if frame.empty:
            return frame
        for column, value in match.items():
            if column not in frame:
                return frame.iloc[0:0]
            frame = frame[frame[column] == value]
        return frame
