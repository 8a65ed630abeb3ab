"""What a run records: ``log.jsonl`` (one JSON object per logged step and per validation) and
TensorBoard events, both written by rank 0 only."""

from __future__ import annotations

import math
from pathlib import Path

from ctslice.errors import InputError
from ctslice.jsonsafe import dumps
from ctslice.parsing import load_json, read_text


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "log.jsonl"
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        """Append one record and mirror its numbers to TensorBoard under ``<kind>/<key>``."""
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(dumps(record) + "\n")
        kind = record.get("kind", "train")
        for key, value in record.items():
            if isinstance(value, (int, float)) and math.isfinite(value) and key != "step":
                self._writer.add_scalar(f"{kind}/{key}", value, record["step"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    @staticmethod
    def truncate(run_dir: Path, step: int) -> int:
        """Drops the records after ``step`` (a resumed run writes them again), before the log is opened.

        A line that is not a JSON record (a run killed while writing it, a damaged disk block) is dropped
        too, rather than making the run impossible to resume; returns how many such lines were dropped.
        """
        path = Path(run_dir) / "log.jsonl"
        if not path.exists():
            return 0
        kept, unreadable = [], 0
        with open(path, "rb") as handle:  # line by line: the log of a long run may be large
            for line in handle:
                try:
                    record = load_json(line.decode("utf-8"), str(path)) if line.strip() else None
                except (UnicodeDecodeError, InputError):
                    record = False
                if record is None:
                    continue
                if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
                    unreadable += 1
                elif record.get("step", 0) <= step:
                    kept.append(record)
        path.write_text("".join(dumps(record) + "\n" for record in kept))
        return unreadable


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    lines = enumerate(read_text(path, "a run log").splitlines(), start=1)
    return [load_json(line, f"{path}, line {number}") for number, line in lines if line.strip()]
