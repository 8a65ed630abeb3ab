"""A shard (I, N): the share of the cases one of N parallel workers (a Kubernetes Indexed Job pod) takes.

Cases are ordered by id and worker I takes every N-th from the I-th, so the N shards partition the
cases (each exactly once) whatever order they were found in, and ``preprocess`` and ``infer`` split
the same folder the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class _HasCaseId(Protocol):
    case_id: str


Case = TypeVar("Case", bound=_HasCaseId)


def select_shard(cases: Sequence[Case], shard: tuple[int, int] | None) -> list[Case]:
    """The cases of ``shard`` (I, N), ordered by id; all of them (as found) without one."""
    if not shard:
        return list(cases)
    index, count = shard
    return [case for k, case in enumerate(sorted(cases, key=lambda c: c.case_id)) if k % count == index]
