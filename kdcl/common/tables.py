"""Tables of text cells, written the same way everywhere: Markdown for files, rich for the terminal."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rich.console import Console
from rich.table import Table


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown (GitHub) table, ending with a newline."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str, left: Collection[str] = ()) -> None:
    """Prints a table on the terminal, 160 columns wide: the columns named in `left` aligned left
    (names, settings), the others right (numbers)."""
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="left" if h in left else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=160).print(table)
