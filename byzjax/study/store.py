"""The crash-safe results store of a study: one SQLite file in the results folder.

Why SQLite: it is in the standard library, a finished cell is written in one
transaction (all of its rows or none), a process killed at any moment (even
``kill -9``) leaves the file consistent, and a rerun asks it which cells are
done in one query. Parquet files per cell would need pyarrow and a rename
dance for atomicity; CSV cannot be appended to atomically. The CSV in the
results folder is an export of this store (``byzjax report`` rewrites it).

Schema::

  meta(key TEXT PRIMARY KEY, value TEXT)          -- config text, versions
  cells(cell_id TEXT PRIMARY KEY,                 -- hash of the settings
        settings TEXT,                            -- JSON of the settings
        rows TEXT,                                -- JSON list of tidy rows
        seconds REAL, finished_at TEXT)

Cells are keyed by a hash of their resolved settings, so a changed
configuration reruns only the cells whose settings changed; rows of cells no
longer in the configuration stay in the store (nothing is ever deleted
unless ``--overwrite`` is given) but are not reported.
"""

import datetime
import json
import math
import os
import sqlite3
from typing import Any, Iterable

STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS cells (
  cell_id TEXT PRIMARY KEY,
  settings TEXT NOT NULL,
  rows TEXT NOT NULL,
  seconds REAL,
  finished_at TEXT
);
"""


def _json_default(v):
  if hasattr(v, "item"):
    return v.item()
  if hasattr(v, "tolist"):
    return v.tolist()
  return str(v)


def _encode_float(v):
  # JSON has no NaN/Inf; store them as strings and decode them back.
  if isinstance(v, float) and not math.isfinite(v):
    return {"__float__": repr(v)}
  return v


def _decode(obj):
  if isinstance(obj, dict) and set(obj) == {"__float__"}:
    return float(obj["__float__"])
  return obj


class Store:
  """Results of finished cells, in ``DIR/results.sqlite`` (or in memory)."""

  def __init__(self, path: str | None):
    self.path = path if path is not None else ":memory:"
    self._db = sqlite3.connect(self.path, isolation_level=None)
    self._db.executescript(_SCHEMA)

  @classmethod
  def in_folder(cls, folder: str) -> "Store":
    return cls(os.path.join(folder, STORE_NAME))

  def close(self):
    self._db.close()

  def set_meta(self, key: str, value: Any) -> None:
    with self._db:
      self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       (key, json.dumps(value, default=_json_default)))

  def meta(self, key: str, default=None):
    row = self._db.execute("SELECT value FROM meta WHERE key = ?",
                           (key,)).fetchone()
    return default if row is None else json.loads(row[0])

  def done(self) -> set[str]:
    return {r[0] for r in self._db.execute("SELECT cell_id FROM cells")}

  def put(self, cell_id: str, settings: dict, rows: list[dict],
          seconds: float) -> None:
    """Writes one finished cell atomically (all its rows, or nothing)."""
    rows_json = json.dumps(
        [{k: _encode_float(v) for k, v in r.items()} for r in rows],
        default=_json_default)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    self._db.execute("BEGIN IMMEDIATE")
    try:
      self._db.execute(
          "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?)",
          (cell_id, json.dumps(settings, sort_keys=True,
                               default=_json_default), rows_json, seconds,
           now))
      self._db.execute("COMMIT")
    except BaseException:
      self._db.execute("ROLLBACK")
      raise

  def rows(self, cell_ids: Iterable[str] | None = None) -> list[dict]:
    """Tidy rows of the given cells (all cells when ``None``), in that order."""
    if cell_ids is None:
      found = self._db.execute("SELECT rows FROM cells ORDER BY rowid")
      return [r for (text,) in found
              for r in json.loads(text, object_hook=_decode)]
    out = []
    for cid in cell_ids:
      got = self._db.execute("SELECT rows FROM cells WHERE cell_id = ?",
                             (cid,)).fetchone()
      if got is not None:
        out.extend(json.loads(got[0], object_hook=_decode))
    return out

  def seconds(self) -> list[float]:
    return [r[0] for r in self._db.execute("SELECT seconds FROM cells")]
