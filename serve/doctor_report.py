"""The doctor's report: :class:`Check`, one row of its table, the row statuses, and the printed table."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUS_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


@dataclass
class Check:
    """One row of the doctor's table."""

    group: str  # e.g. "packages", "render", "libero"
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.status == FAIL and self.required


def _merge_passing(rows: list[Check]) -> list[Check]:
    """One row per package group when all of its packages pass (``--verbose`` shows them all)."""
    merged: list[Check] = []
    for r in rows:
        last = merged[-1] if merged else None
        if (
            r.status == OK
            and r.group.startswith(("packages", "extra"))
            and last is not None
            and last.group == r.group
            and last.status == OK
        ):
            short = r.detail.split(" (")[0]
            merged[-1] = Check(r.group, "all", OK, f"{last.detail}, {r.name} {short}")
        elif r.status == OK and r.group.startswith(("packages", "extra")):
            merged.append(Check(r.group, r.name, OK, f"{r.name} {r.detail.split(' (')[0]}"))
        else:
            merged.append(r)
    return merged


def print_checks(rows: list[Check], seconds: float, verbose: bool = False) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="dfm-vla doctor", show_lines=False)
    for col in ("group", "check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for r in rows if verbose else _merge_passing(rows):
        status = r.status if r.required or r.status in (OK, SKIP) else f"{r.status} (optional)"
        table.add_row(
            escape(r.group),
            escape(r.name),
            f"[{STATUS_STYLE[r.status]}]{status}[/]",
            escape(r.detail),
            escape(r.fix),
        )
    console = Console()
    console.print(table)
    failed = [r for r in rows if r.failed]
    warned = [r for r in rows if r.status == WARN or (r.status == FAIL and not r.required)]
    verdict = (
        f"[bold red]{len(failed)} required check(s) failed[/]"
        if failed
        else "[green]all required checks pass[/]"
    )
    console.print(f"{verdict}, {len(warned)} warning(s), {seconds:.1f} s")
