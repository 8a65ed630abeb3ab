"""The package's layers point down only, and only the command layer prints.

Both tests read ``ctslice/`` with ``ast`` (every import, including those inside functions; ``from .
import x`` resolved), so they see what a reader sees, not only what one run happens to import.
The layer table below is the one source of the layering (the README's "Code map" explains it);
it has no exceptions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ctslice"

# Layer 1 is the top. A module belongs to the entry with the longest matching prefix; "ctslice" is the package
# root alone (``ctslice/__init__.py``: the version and the lazy ``ctslice.interpolate`` of the API facade).
LAYERS = {
    1: ("ctslice", "ctslice.__main__", "ctslice.cli", "ctslice.commands", "ctslice.console", "ctslice.api"),
    2: ("ctslice.training", "ctslice.inference", "ctslice.evaluation", "ctslice.memory"),
    3: ("ctslice.models", "ctslice.codecs", "ctslice.data"),
    4: ("ctslice.io", "ctslice.config", "ctslice.config_domains", "ctslice.checkpoint", "ctslice.hardware",
        "ctslice.errors", "ctslice.parsing", "ctslice.jsonsafe", "ctslice.version", "ctslice.reporting"),
}
PRINTING_LIBRARIES = ("rich", "typer", "click", "ctslice.console")  # only the command layer may import these


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _owner(name: str) -> tuple[int, str] | None:
    """(layer, table entry) of a ``ctslice`` module: the longest entry that is the name or a package above it."""
    matches = [(len(entry), layer, entry) for layer, entries in LAYERS.items() for entry in entries
               if name == entry or (entry != "ctslice" and name.startswith(entry + "."))]
    if not matches:
        return None
    _, layer, entry = max(matches)
    return layer, entry


def _imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported ``ctslice`` module) for every import in the module, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # ``from ctslice import checkpoint`` imports the module ctslice.checkpoint
                found.append((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base))
    return [(line, target) for line, target in found if target == "ctslice" or target.startswith("ctslice.")]


def _unit(name: str) -> str:
    """The subpackage (or top-level module) a module belongs to: ``ctslice.data.cache`` -> ``ctslice.data``."""
    return ".".join(name.split(".")[:2])


def test_every_module_is_in_the_layer_table():
    missing = sorted(name for name in MODULES if _owner(name) is None)
    assert not missing, f"modules in no layer of tests/test_layers.py: {missing}"


def test_imports_point_down_only():
    upward = []
    for name, path in MODULES.items():
        layer, _ = _owner(name)
        for line, target in _imports(name, path):
            owner = _owner(target)
            if owner is not None and owner[0] < layer:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} (layer {layer}) imports {target} "
                              f"(layer {owner[0]})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(dict.fromkeys(upward))


def test_no_import_cycle_between_subpackages():
    edges: dict[str, dict[str, str]] = {}  # unit -> {imported unit: "path:line" of the first such import}
    for name, path in MODULES.items():
        for line, target in _imports(name, path):
            if _unit(target) != _unit(name) and _unit(name) != "ctslice":
                where = f"{path.relative_to(PACKAGE.parent)}:{line}"
                edges.setdefault(_unit(name), {}).setdefault(_unit(target), where)
    cycles: dict[frozenset, str] = {}  # one message per set of subpackages that import each other in a ring
    for start, targets in sorted(edges.items()):
        for target in sorted(targets):
            back = _path(edges, target, start)
            if back is not None and frozenset(back) not in cycles:
                ring = [start, *back]
                hops = zip(ring, ring[1:], strict=False)
                cycles[frozenset(back)] = ", ".join(f"{a} -> {b} ({edges[a][b]})" for a, b in hops)
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(cycles.values())


def _path(edges: dict[str, dict[str, str]], start: str, goal: str) -> list[str] | None:
    """A chain of imports from ``start`` to ``goal`` (depth first), or None."""
    stack, seen = [[start]], {start}
    while stack:
        chain = stack.pop()
        if chain[-1] == goal:
            return chain
        for following in edges.get(chain[-1], {}):
            if following not in seen:
                seen.add(following)
                stack.append([*chain, following])
    return None


def test_only_the_command_layer_prints():
    """Outside the command layer: no ``print(``, no ``sys.stdout``/``sys.stderr`` writes, no Rich, Typer or
    ``ctslice.console``; the library reports through return values, callbacks and the ``ctslice`` logger."""
    offences = []
    for name, path in MODULES.items():
        if _owner(name)[0] == 1:
            continue
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offences.append(f"{where}:{node.lineno}: print(...)")
            elif (isinstance(node, ast.Attribute) and node.attr in ("write", "writelines")
                  and isinstance(node.value, ast.Attribute) and node.value.attr in ("stdout", "stderr")
                  and isinstance(node.value.value, ast.Name) and node.value.value.id == "sys"):
                offences.append(f"{where}:{node.lineno}: sys.{node.value.attr}.{node.attr}")
            imported = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offences += [f"{where}:{node.lineno}: imports {module}" for module in imported
                         if any(module == lib or module.startswith(lib + ".") for lib in PRINTING_LIBRARIES)]
    assert not offences, "printing outside the command layer:\n" + "\n".join(dict.fromkeys(offences))


FLAG = re.compile(r"--[a-z]")


def _flags_in_raises(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant (f-string parts included) inside a ``raise`` that names a flag."""
    return [(raised.lineno, text.value) for raised in ast.walk(tree) if isinstance(raised, ast.Raise)
            for text in ast.walk(raised)
            if isinstance(text, ast.Constant) and isinstance(text.value, str) and FLAG.search(text.value)]


def test_only_the_command_layer_words_errors_as_flags():
    """Library errors name the setting in plain words ("thin spacing 0: ..."); only the command layer, which
    parses the flags, says which flag (issue 14)."""
    offences = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}" for name, path in MODULES.items()
                if _owner(name)[0] != 1
                for line, text in _flags_in_raises(ast.parse(path.read_text(encoding="utf-8"), str(path)))]
    assert not offences, "flag-worded errors outside the command layer:\n" + "\n".join(offences)


def test_the_flag_check_sees_f_strings_inside_raises_only():
    tree = ast.parse('x = "--keep"\nraise InputError(f"--size {n}: too big")\nraise ValueError("size 3")\n')
    assert _flags_in_raises(tree) == [(2, "--size ")]


def test_the_walk_sees_imports_inside_functions_and_resolves_relative_ones(tmp_path):
    """What the three tests above rely on: a module of ``data`` importing the trainer inside a function is an
    upward import at its line, and ``from . import cache`` is ``ctslice.data.cache``."""
    module = tmp_path / "fake.py"
    module.write_text("from . import cache\nfrom ..io import geometry\n\n\ndef later():\n"
                      "    from ctslice.training import trainer\n    return trainer\n")
    found = _imports("ctslice.data.fake", module)
    assert found == [(1, "ctslice.data.cache"), (2, "ctslice.io.geometry"), (6, "ctslice.training.trainer")]
    assert [_owner(target)[0] for _, target in found] == [3, 4, 2]  # the last one points up from layer 3
    assert _owner("ctslice.data.fake") == (3, "ctslice.data") and _owner("ctslice") == (1, "ctslice")
    assert _owner("ctslice.unlisted") is None  # a new top-level module must be put in the table
