"""The Typer application: one thin function per command, registered from the modules beside it.

Command modules import nothing heavy at import time (no numpy, torch, SimpleITK) so that
``ctslice --help`` answers at once; each command imports its body (``ctslice.commands``) inside the
function. Expected failures (``CtsliceError``) become one red line on stderr and the error's exit code;
``--quiet``/``--verbose`` (at the root or after a command) choose which library log lines are shown.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
from collections.abc import Callable

import typer
from typer.core import TyperCommand, TyperGroup

from ctslice.errors import CtsliceError
from ctslice.version import __version__


def _without_flag_types(params: list) -> list:
    """A flag takes no value, yet Typer's help shows a ``<bool>`` type beside each one: an empty metavar
    leaves the type column blank for flags (``--help`` included)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    def get_params(self, ctx) -> list:
        return _without_flag_types(super().get_params(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        """``[OPTIONS] INPUTS...`` as click writes it, not Typer's ``{inputs}...``."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.name.upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(TyperGroup):
    """The root command. A wrong command line (a bad option value, a missing argument) is one line and exit
    code 2, as every other bad input, rather than Typer's usage text and error box (a script's log keeps
    only the reason)."""

    def get_params(self, ctx) -> list:
        return _without_flag_types(super().get_params(ctx))

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
    name="ctslice",
    cls=Group,
    help="Thick-slice to thin-slice CT with a latent diffusion model.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
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
            if not error.silent:
                print_error(str(error))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def command(name: str, example: str | None = None, **kwargs) -> Callable:
    """Register ``function`` as ``ctslice NAME`` with the error guard and ``--quiet``/``--verbose`` around it;
    ``example``, a command line, ends its ``--help``."""
    if example:
        kwargs.setdefault("epilog", f"Example: {example}")

    def register(function: Callable) -> Callable:
        app.command(name, cls=Command, **kwargs)(guarded(_with_verbosity(function)))
        return function

    return register


QUIET_HELP = "Print only warnings and errors on stderr (no notes, progress lines or bars); stdout is unchanged."
VERBOSE_HELP = "Also print the library's debug lines."


def _with_verbosity(function: Callable) -> Callable:
    """``--quiet``/``--verbose`` after the command name too (``ctslice preprocess -q ...``), as at the root."""

    @functools.wraps(function)
    def wrapper(*args, quiet: bool = False, verbose: bool = False, **kwargs):
        if quiet or verbose:
            _verbosity(quiet, verbose)
        return function(*args, **kwargs)

    signature = inspect.signature(function)
    options = [inspect.Parameter(flag, inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                 default=typer.Option(False, f"--{flag}", f"-{flag[0]}", help=text))
               for flag, text in (("quiet", QUIET_HELP), ("verbose", VERBOSE_HELP))]
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *options])
    return wrapper


def _verbosity(quiet: bool, verbose: bool) -> None:
    """Show the library's log records at the level the flags choose (``ctslice.console.show_logs``)."""
    import logging

    from ctslice.console import show_logs

    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose contradict each other; give one")
    show_logs(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


class PrecisionChoice(str, enum.Enum):
    """``--precision``: auto resolves per device (``ctslice.hardware.resolve_precision``)."""

    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


def precision_option(default: PrecisionChoice | None = PrecisionChoice.auto, what: str = "auto") -> PrecisionChoice:
    return typer.Option(default, "--precision", help=f"Autocast precision (default: {what}: bf16 on GPUs and on "
                        "CPUs with AVX512-BF16/AMX, fp32 elsewhere).")


def threads_option():
    from ctslice.cli.domains import number

    return number(None, "--threads", help="Intra-op CPU threads (default: the CPUs this process may use, from its "
                  "affinity and cgroup quota).", low=1, high=4096, integer=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ctslice {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
) -> None:
    """Thick-slice to thin-slice CT with a latent diffusion model."""
    _verbosity(quiet, verbose)


def main() -> None:
    """Console-script entry point."""
    app()
