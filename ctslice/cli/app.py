"""The Typer application: one thin function per command, registered from the modules beside it.

Command modules import nothing heavy at import time (no numpy, torch, SimpleITK) so that
``ctslice --help`` answers at once; each command imports the library it calls inside its body.
Expected failures (``CtsliceError``) become one red line on stderr and the error's exit code.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable

import typer

from ctslice import __version__
from ctslice.errors import CtsliceError

app = typer.Typer(
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


class PrecisionChoice(str, enum.Enum):
    """``--precision``: auto resolves per device (``ctslice.hardware.resolve_precision``)."""

    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


def precision_option(default: PrecisionChoice | None = PrecisionChoice.auto, what: str = "auto") -> PrecisionChoice:
    return typer.Option(default, "--precision", help=f"Autocast precision (default: {what}: bf16 on GPUs and on "
                        "CPUs with AVX512-BF16/AMX, fp32 elsewhere).")


def threads_option():
    return typer.Option(None, "--threads", min=1, help="Intra-op CPU threads (default: the CPUs this process may "
                        "use, from its affinity and cgroup quota).")


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
