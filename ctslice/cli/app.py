"""The Typer application: one thin function per command, registered from the modules beside it.

Command modules import nothing heavy at import time (no numpy, torch, SimpleITK) so that
``ctslice --help`` answers at once; each command imports the library it calls inside its body.
Expected failures (``CtsliceError``) become one red line on stderr and the error's exit code.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import typer
from typer.core import TyperGroup

from ctslice import __version__
from ctslice.errors import CtsliceError


class OneLineErrors(TyperGroup):
    """A wrong command line (a bad option value, a missing argument) is one line and exit code 2, as every
    other bad input, rather than Typer's usage text and error box (a script's log keeps only the reason)."""

    def make_context(self, *args, **kwargs):
        with _one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line():
    try:
        yield
    except typer.TyperException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # `ctslice` alone prints the help
            raise
        from ctslice.console import error as print_error

        context = getattr(error, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        print_error(" ".join(error.format_message().split()) + hint)
        raise typer.Exit(getattr(error, "exit_code", 2)) from None


app = typer.Typer(
    cls=OneLineErrors,
    name="ctslice",
    help="Thick-slice to thin-slice CT with a latent diffusion model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold patient data
    rich_markup_mode="rich",
)


def guarded(function: Callable) -> Callable:
    """Run a command, turning an expected failure into one line and its exit code."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from ctslice.console import error as print_error

        try:
            return function(*args, **kwargs)
        except CtsliceError as error:
            print_error(str(error))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def command(name: str, **kwargs) -> Callable:
    """Register ``function`` as ``ctslice NAME`` with the error guard around it."""

    def register(function: Callable) -> Callable:
        app.command(name, **kwargs)(guarded(function))
        return function

    return register


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ctslice {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Thick-slice to thin-slice CT with a latent diffusion model."""


def main() -> None:
    """Console-script entry point."""
    app()
