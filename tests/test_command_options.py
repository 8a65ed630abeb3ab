"""The command layer's flag wording: the library names a setting, the command names the flag (issue 14)."""

from __future__ import annotations

import pytest

from ctslice.commands.options import flag_wording, parse_shard
from ctslice.errors import CtsliceError, InputError


def test_a_setting_error_is_reworded_as_its_flag_and_keeps_its_type():
    with pytest.raises(InputError, match=r"^--device-memory 'lots': expected a size$"):
        with flag_wording(device="--device", device_memory="--device-memory"):
            raise InputError("device memory 'lots': expected a size")
    with pytest.raises(InputError, match=r"^--device gpu: expected auto"):
        with flag_wording(device_memory="--device-memory", device="--device"):
            raise InputError("device gpu: expected auto")


def test_other_errors_pass_unchanged():
    with pytest.raises(InputError, match=r"^hardware.device cuda: no GPU$"):
        with flag_wording(device="--device"):
            raise InputError("hardware.device cuda: no GPU")
    with pytest.raises(CtsliceError, match=r"^window lost$"):  # not an input error: not a flag's fault
        with flag_wording(window="--window"):
            raise CtsliceError("window lost")


@pytest.mark.parametrize(("text", "message"), [("x", "expected I/N"), ("2/2", "need 0 <= I < N"), ("1/2/3", "I/N")])
def test_bad_shards_name_the_flag(text, message):
    with pytest.raises(InputError, match=f"^--shard '{text}': .*{message}"):
        parse_shard(text)


def test_a_shard_is_index_and_count():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None and parse_shard("") is None
