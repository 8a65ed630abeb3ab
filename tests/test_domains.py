"""Every config key and every command-line option has a declared domain: a hostile value (NaN, infinity,
zero, negative, empty, huge, wrong type) is one line on stderr and exit code 2, before any work and before
any file is written. Hypothesis draws the values; the keys and options are enumerated from the code, so a
new one is covered without touching this file. Plus the parsing bombs: YAML aliases, deep nesting, huge
numbers, and the cap on the thin output grid."""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctslice.config import Config, load_config
from ctslice.config_domains import CHOICES, DOMAINS
from ctslice.errors import ConfigError, InputError

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
CLI = settings(FAST, max_examples=30,  # the `cli` fixture is a stateless runner
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HUGE = 10**30


def config_keys() -> tuple[dict[str, type], set[str]]:
    """``section.key`` -> its type without ``None``, for every field of every section of ``Config``; and
    the keys that may be ``None`` (not set)."""
    keys, optional = {}, set()
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(typing.get_type_hints(Config)[section.name])
        for name, kind in hints.items():
            if typing.get_origin(kind) in (typing.Union, types.UnionType):
                kind = next(k for k in typing.get_args(kind) if k is not type(None))
                optional.add(f"{section.name}.{name}")
            keys[f"{section.name}.{name}"] = kind
    return keys, optional


KEYS, OPTIONAL = config_keys()
ZERO_OK = {"data.patch_size", "data.num_workers", "codec.overlap", "training.seed", "training.warmup_steps",
           "training.warmup_epochs", "training.weight_decay", "diffusion.mean_fraction", "inference.overlap",
           "data.inplane_fraction",
           "validation.val_samples"}
WRONG_TEXT = st.text("abcdefghij", min_size=1, max_size=8).map(lambda s: "x_" + s)  # never a YAML bool or null


def hostile(key: str) -> tuple[list, st.SearchStrategy]:
    """Values ``key`` must refuse, by its type: a fixed list (each one is tried) and a strategy (drawn)."""
    kind = KEYS[key]
    common = [{"a": 1}, *([] if key in OPTIONAL else [None])]
    if kind is bool:
        return [*common, 2, "maybe", [True], math.nan], WRONG_TEXT
    if kind in (int, float):
        fixed = [math.nan, math.inf, -math.inf, HUGE, -HUGE, 1e300, -1, "", [1], True, *common]
        fixed += [] if key in ZERO_OK else [0]
        fixed += [1.5, 2.0] if kind is int else []
        negative = st.integers(max_value=-1) if kind is int else st.floats(max_value=-1e-9, allow_infinity=False)
        return fixed, st.one_of(negative, WRONG_TEXT, st.integers(min_value=10**9 + 1))
    if kind is str:
        return ["", [1], "x" * 100_000, {"a": 1}, *(["bogus"] if key in CHOICES else [])], WRONG_TEXT.map(list)
    (item,) = typing.get_args(kind)
    elements = [0, -8, HUGE, math.nan, "x"] if item is int else [1, "x", math.nan]
    return [[], [item()] * 1000, "abc", [[1]], *common, *([e] for e in elements)], st.just([])


def as_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip().removesuffix("...").strip()


def test_every_key_has_a_domain_or_is_a_choice_or_a_bool():
    declared = set(DOMAINS) | set(CHOICES)
    assert declared == {key for key, kind in KEYS.items() if kind is not bool}
    assert CHOICES["training.precision"] == ("auto", "bf16", "fp32")


def assert_config_refuses(key: str, value, folder: Path) -> None:
    """``key: value`` is refused as a ``--set`` override (naming it) and in a file (naming it), in one line."""
    override = f"{key}={as_yaml(value)}"
    with pytest.raises(ConfigError) as refused:
        load_config(None, [override])
    message = str(refused.value)
    assert message.startswith(f"--set {override[:60]}") and "\n" not in message and len(message) < 400, message
    section, name = key.split(".")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({section: {name: value}}), encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 500, message


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_config_key_refuses_hostile_values(key, tmp_path):
    fixed, _ = hostile(key)
    for value in fixed:
        assert_config_refuses(key, value, tmp_path)


@FAST
@given(st.sampled_from(sorted(KEYS)).flatmap(lambda key: st.tuples(st.just(key), hostile(key)[1])))
def test_every_config_key_refuses_drawn_hostile_values(tmp_path_factory, pair):
    assert_config_refuses(*pair, tmp_path_factory.mktemp("config"))


@pytest.mark.parametrize("override, message", [
    ("training.grad_clip=-1", "training.grad_clip must be a finite number above 0 and at most 1e+06, got -1.0"),
    ("training.max_steps=-5", "training.max_steps must be an integer from 1 to 1,000,000,000, got -5"),
    ("training.max_steps=0", "training.max_steps must be an integer from 1 to 1,000,000,000, got 0"),
    ("data.patch_size=-16", "data.patch_size must be an integer from 0 to 4,096, got -16"),
    ("inference.window_size=0", "inference.window_size must be an integer from 16 to 8,192, got 0"),
    ("training.lr=-1", "training.lr must be a finite number above 0 and at most 1, got -1.0"),
    ("training.lr=nan", "training.lr must be a finite number above 0 and at most 1, got nan"),
    ("data.num_workers=-1", "data.num_workers must be an integer from 0 to 256, got -1"),
    ("model.channels=[]", "model.channels must be a list of 1 to 8 channel counts from 1 to 4,096, got []"),
    ("model.norm_num_groups=0", "model.norm_num_groups must be an integer from 1 to 4,096, got 0"),
    ("model.attention_heads=0", "model.attention_heads must be an integer from 1 to 1,024, got 0"),
    ("hardware.device=gpu", "hardware.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("inference.steps=2000", "inference.steps (2000) must be at most diffusion.num_train_timesteps (1000)"),
])
def test_the_values_of_the_issue_are_refused_naming_the_override(override, message):
    with pytest.raises(ConfigError) as refused:
        load_config(None, [override])
    assert str(refused.value) == f"--set {override}: {message}"


def test_a_checkpoint_config_is_checked_like_a_file():
    from ctslice.config import config_from_dict

    data = Config().to_dict()
    data["training"]["grad_clip"] = -1.0
    with pytest.raises(ConfigError, match=r"^run.pt \(config\): training.grad_clip must be a finite number above 0"):
        config_from_dict(data, where="run.pt (config)")


def test_huge_values_are_abbreviated_in_messages():
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["data.cache=" + "x" * 100_000])
    assert len(str(refused.value)) < 300 and "..." in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["model.channels=[" + ", ".join(["0"] * 100_000) + "]"])
    assert str(refused.value).endswith("got [0, 0, 0, 0, 0, 0, ...]")


# --- parsing bombs ----------------------------------------------------------------------------------------------

def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, levels)]
    return "\n".join(lines)


def test_a_yaml_alias_bomb_is_refused_at_its_first_alias(tmp_path):
    path = tmp_path / "bomb.yaml"  # 9^9 leaves if expanded
    text = "training:\n" + "\n".join("  " + line for line in alias_bomb().splitlines()) + "\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == f"{path}: not usable YAML (YAML aliases (*name) are not accepted, line 3)"
    flow = "[" + ", ".join(f"&a{k} [{', '.join([f'*a{k - 1}'] * 9) if k else 'x, x'}]" for k in range(9)) + "]"
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"training.seed={flow}"])
    assert str(refused.value).startswith("--set training.seed=[&a0 [x, x], &a1 [*a0, ")
    assert str(refused.value).endswith(": not usable YAML (YAML aliases (*name) are not accepted, line 1)")


@pytest.mark.parametrize("depth", [40, 200_000])
def test_deeply_nested_yaml_is_one_line(depth, tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("training: " + "[" * depth + "]" * depth + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not usable YAML \(nested more than 32 levels deep, line 1\)$"):
        load_config(path)


@pytest.mark.parametrize("depth, reason", [(40, "nested more than 32 levels deep"), (200_000, "nested too deeply")])
def test_deeply_nested_splits_json_is_one_line(depth, reason, tmp_path):
    from ctslice.data.splits import read_splits

    path = tmp_path / "splits.json"
    path.write_text('{"train": ' + "[" * depth + "]" * depth + "}", encoding="utf-8")
    with pytest.raises(InputError) as refused:
        read_splits(path)
    assert str(refused.value) == f"{path}: not usable JSON ({reason})"


def test_numbers_of_thousands_of_digits_are_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  seed: " + "9" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not usable YAML \(Exceeds the limit \(4300 digits\)"):
        load_config(path)
    from ctslice.data.splits import read_splits

    (tmp_path / "splits.json").write_text('{"train": [' + "9" * 5000 + "]}", encoding="utf-8")
    with pytest.raises(InputError, match="not usable JSON"):
        read_splits(tmp_path / "splits.json")


def test_yaml_keeps_safe_load_semantics():
    from ctslice.parsing import load_yaml

    assert load_yaml("a: [1, 2.5, x, null, true]\nb: {c: 3}", "t") == {"a": [1, 2.5, "x", None, True], "b": {"c": 3}}
    with pytest.raises(InputError, match="could not determine a constructor"):
        load_yaml("!!python/object/apply:os.system ['true']", "t")


# --- the thin grid ----------------------------------------------------------------------------------------------

def test_the_thin_grid_is_capped_before_anything_is_allocated():
    from ctslice.io.geometry import MAX_THIN_SLICES, thin_grid
    from ctslice.io.volume import Grid

    thick = Grid((512, 512, 60), (0.7, 0.7, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert thin_grid(thick, 0.5).size == (512, 512, 600)
    with pytest.raises(InputError, match=r"makes 30,000,000 slices of 512 x 512 \(14,648.44 GiB as int16\)"):
        thin_grid(thick, 1e-5)
    with pytest.raises(InputError, match=r"makes 30,000 slices .* at most 20,000 slices and 8 GiB"):
        thin_grid(thick, 0.01)  # 30,000 slices: 15 GiB of int16
    small = Grid((32, 32, 8), (12.0, 12.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert thin_grid(small, 40 / MAX_THIN_SLICES * 1.001).size[2] == MAX_THIN_SLICES - 20
    for spacing in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(InputError, match="must be a positive number of mm"):
            thin_grid(small, spacing)


# --- the command line -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """A real scan and config (outside ``out``), and ``out``, the folder no refused command may write in."""
    from ctslice.data.phantom import make_phantom
    from ctslice.io import write_volume

    root = tmp_path_factory.mktemp("domains")
    scan = write_volume(make_phantom(shape=(8, 32, 32), spacing=(12.0, 12.0, 5.0), seed=3), root / "in" / "scan.nii.gz")
    config = root / "config.yaml"
    settings = {"data": {"cache": str(root / "in" / "cache.h5")}, "hardware": {"device": "cpu"}}
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    (root / "out").mkdir()
    return {"scan": scan, "config": config, "out": root / "out"}


def rest_of_command_line(command: str, places: dict[str, Path]) -> list[str]:
    """A command line that would do work if the option under test were accepted."""
    scan, config, out = places["scan"], places["config"], places["out"]
    return {
        "preprocess": [scan.parent, "-o", out / "cache.h5"],
        "split": [out / "cache.h5", "-o", out / "splits.json"],
        "demo": ["--out", out / "demo"],
        "validate": ["--checkpoint", out / "x.pt", "--cache", out / "cache.h5", "--splits", out / "splits.json"],
        "infer": [scan, "-o", out / "thin.nii.gz", "--method", "cubic"],
        "train": ["--config", config, "--out", out / "run"],
        "inspect-memory": ["--config", config],
    }[command]


def numeric_options() -> list[tuple[str, str, str, bool]]:
    """(command, flag, type, zero accepted) for every int or float option of every command."""
    from ctslice.cli import app

    found = []
    for command in app.registered_commands:
        for parameter in inspect.signature(command.callback).parameters.values():
            info = parameter.default
            if parameter.annotation in ("int", "float") and type(info).__name__ == "OptionInfo":
                flag = max(info.param_decls, key=len)
                zero_ok = flag in ("--size", "--seed", "--val", "--test", "--adapt")
                found.append((command.name, flag, parameter.annotation, zero_ok))
    return found


NUMERIC = numeric_options()


def test_the_numeric_options_are_found():
    assert {(c, f) for c, f, _, _ in NUMERIC} >= {("preprocess", "--thick-spacing"), ("infer", "--thin-spacing"),
                                                 ("inspect-memory", "--ratio"), ("demo", "--minutes")}


def option_values(kind: str, zero_ok: bool) -> list[str]:
    return ["nan", "NaN", "inf", "-inf", "1e400", "9" * 40, "-1", "", "abc", "[1]", "1e12", *([] if zero_ok else ["0"]),
            *(["1.5"] if kind == "int" else [])]


def assert_refused(result, places) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr) < 400, result.stderr
    assert list(places["out"].iterdir()) == []


@pytest.mark.parametrize("command, flag, kind, zero_ok", NUMERIC, ids=[f"{c} {f}" for c, f, _, _ in NUMERIC])
def test_every_numeric_option_refuses_hostile_values(command, flag, kind, zero_ok, places, cli):
    for value in option_values(kind, zero_ok):
        result = cli(command, *rest_of_command_line(command, places), f"{flag}={value}")
        assert_refused(result, places)
        assert f"'{flag}'" in result.stderr


@CLI
@given(st.sampled_from(NUMERIC), st.floats(max_value=-1e-9, allow_infinity=False))
def test_every_numeric_option_refuses_drawn_negative_values(places, cli, option, value):
    command, flag, _, _ = option
    assert_refused(cli(command, *rest_of_command_line(command, places), f"{flag}={value!r}"), places)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_config_key_refuses_hostile_values_on_the_command_line(key, places, cli):
    fixed, _ = hostile(key)
    for command, value in zip(("train", "inspect-memory"), fixed[:2], strict=True):  # both read configs
        result = cli(command, *rest_of_command_line(command, places), "--set", f"{key}={as_yaml(value)}")
        assert_refused(result, places)
        assert result.stderr.startswith(f"error: --set {key}=")


@pytest.mark.parametrize("args", [
    ["preprocess", "{scan_dir}", "-o", "{out}/cache.h5", "--profile", "cosine"],
    ["preprocess", "{scan_dir}", "-o", "{out}/cache.h5", "--shard", "3/2"],
    ["infer", "{scan}", "-o", "{out}/thin.nii.gz", "--method", "bogus"],
    ["infer", "{scan}", "-o", "{out}/thin.nii.gz", "--method", "cubic", "--mode", ""],
    ["infer", "{scan}", "-o", "{out}/thin.nii.gz", "--method", "cubic", "--thin-spacing", "1e-5"],
    ["inspect-memory", "--config", "{config}", "--volume", "9" * 5000 + "x512x512"],
    ["inspect-memory", "--config", "{config}", "--volume", "100000x512x512"],
    ["inspect-memory", "--config", "{config}", "--device-memory", "9" * 400 + "GB"],
    ["inspect-memory", "--config", "{config}", "--device", "x" * 10_000],
    ["demo", "--out", "{out}/demo", "--device", "gpu"],
], ids=["profile", "shard", "method", "mode", "thin grid", "volume digits", "volume side", "device memory",
        "device", "demo device"])
def test_text_options_refuse_hostile_values(args, places, cli):
    names = {"scan": places["scan"], "scan_dir": places["scan"].parent, "out": places["out"],
             "config": places["config"]}
    assert_refused(cli(*(a.format(**names) for a in args)), places)


def test_a_wrong_command_line_is_one_line(places, cli):
    for args in (["preprocess"], ["infer", places["scan"]], ["split", "--bogus"], ["nonsense"]):
        assert_refused(cli(*args), places)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_spacing_leaves_a_good_cache_as_it_was(value, dataset, tmp_path, cli):
    """The issue's worst case: NaN passed every check, every case was redone and failed, the cache emptied."""
    import shutil

    cache, _ = dataset
    copy = shutil.copy(cache, tmp_path / "cache.h5")
    before = copy.read_bytes()
    result = cli("preprocess", cache.parent / "raw", "-o", copy, "--thick-spacing", value)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
    assert copy.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["cache.h5"]
