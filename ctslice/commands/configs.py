"""``ctslice configs``: the shipped configs as one table."""

from __future__ import annotations

from rich.table import Table

from ctslice.config import SHIPPED_CONFIGS, shipped_configs
from ctslice.console import stdout


def run() -> None:
    table = Table("Config", "Description", title=f"Shipped configs ({SHIPPED_CONFIGS})", title_justify="left")
    for name, (_, description) in shipped_configs().items():
        table.add_row(name, description)
    stdout.print(table)
