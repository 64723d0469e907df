"""Printing and saving result tables: every `bench` and `study` command goes through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfm_vla.utils.io import atomic_write_json


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` (dicts with the same keys) as a rich table; floats get 4 significant digits."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(col, "")) for col in columns))
    console = Console()
    if not console.is_terminal:  # a log file or pipe: do not squeeze the table to 80 columns
        console = Console(width=max(console.width, 200))
    console.print(table)


def report(title: str, result: dict[str, Any], json_path: str | Path | None) -> None:
    """Print ``result["rows"]`` as a table and write the whole ``result`` as JSON to ``json_path``."""
    print_table(title, result.get("rows", []))
    if json_path:
        atomic_write_json(json_path, result)
        print(f"wrote {json_path}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
