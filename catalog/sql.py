"""SQL over a store's catalog: DuckDB views of the Parquet tables.

    python -m catalog sql --store S "SELECT speaker_id, sum(duration_s) / 3600 AS hours
                                     FROM utterances GROUP BY 1 ORDER BY 2 DESC LIMIT 10"

Views: utterances, speakers, shards, fields, errors (the tables that exist in the store). DuckDB
reads the Parquet files in place (column pruning, no copy), so a query over a million
utterances costs what its columns cost. The connection is in-memory and the views only read
the tables (to change the catalog, rebuild it; DuckDB statements such as COPY can still write
files, as in any DuckDB session).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa

from catalog.layout import TABLES, table_path


def connect(store: Path, threads: int | None = None):
    """An in-memory DuckDB connection with one view per catalog table of `store`."""
    import duckdb

    store = Path(store)
    present = [t for t in TABLES if table_path(store, t).exists()]
    if not present:
        raise FileNotFoundError(f"{store}: no catalog tables (catalog/*.parquet); run pipelines/extract.py first")
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    for name in present:
        path = str(table_path(store, name)).replace("'", "''")
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
    return con


def run_sql(store: Path, query: str, threads: int | None = None) -> pa.Table:
    """The result of one SQL statement over the store's catalog views, as an Arrow table.

    Raises ValueError (naming the store) for a query DuckDB rejects."""
    import duckdb

    con = connect(store, threads)
    try:
        relation = con.sql(query)
        if relation is None:  # a statement without rows
            return pa.table({})
        return _plain_numbers(relation.to_arrow_table())
    except duckdb.Error as exc:
        raise ValueError(f"{store}: SQL error: {exc}") from None
    finally:
        con.close()


def _plain_numbers(table: pa.Table) -> pa.Table:
    """DuckDB sums integers as HUGEINT (Arrow decimal): whole decimals as int64, others as float64,
    so JSON and CSV show plain numbers."""
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type):
            typ = pa.int64() if f.type.scale == 0 else pa.float64()
            table = table.set_column(i, f.name, table.column(i).cast(typ))
    return table


def to_csv(table: pa.Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v
                         for v in row.values()])
    return out.getvalue().rstrip("\n")


def format_rows(rows: list[dict], max_width: int = 48) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])

    def cell(v):
        s = "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
        return s if len(s) <= max_width else s[:max_width - 3] + "..."

    cells = [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
