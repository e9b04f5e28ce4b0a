"""The ``nowcast`` command line.

Each submodule of this package registers its verbs on :data:`app` with
``@app.command()``; they are imported here, so a new verb is a new module.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="nowcast",
    help="Radar and crowd-flow nowcasting: ingest, train, forecast, verify, map.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _conventional_help() -> None:
    """Help in click's usual style: ``ARCHIVE`` in the usage line, ``PATH``/``TEXT`` after options, nothing
    after flags; typer 0.29 writes ``{archive}``, ``<path>`` and ``<bool>``, which read as template leftovers."""
    from typer import core

    typed = core._TyperParameter.display_type

    def display_type(self, ctx):
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return ""
        return typed(self, ctx).strip("<>").replace("list[", "").rstrip("]").upper()

    def usage_name(self) -> str:
        name = self.display_name_raw.upper()
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

    core._TyperParameter.display_type = display_type
    core.TyperArgument._usage_display_name = usage_name
    core.TyperArgument._rich_display_name = lambda self: self.display_name_raw.upper() + (
        "..." if self.metavar is None and self.nargs != 1 else "")


_conventional_help()


def console():
    """A rich console; when output is not a terminal (logs, CI) tables are 120 columns, not 80."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out = Console(width=120)
    return out


def fail(message: str, code: int = 1) -> None:
    """Print an expected error without a traceback, on whole lines (logs keep paths uncut), and exit."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def main() -> None:
    """Console-script entry point: any file-system error a verb did not handle ends in one line
    naming the path (exit 2), not a traceback."""
    try:
        app()
    except OSError as err:
        from rich.console import Console

        where = f" {err.filename}:" if err.filename else ""
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/]{where} {err.strerror or err}")
        raise SystemExit(2) from None
