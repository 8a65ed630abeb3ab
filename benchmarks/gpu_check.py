"""The GPU check behind ``benchmarks/gpu_check.sh``: every GPU claim of issue 13 in one table.

    bash benchmarks/gpu_check.sh               # one GPU, under 8 minutes: the reference config at full size
    bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps on the CPU, tiny config and small volume

Rows: device resolution (``cuda`` and ``cuda:0``: the resolved device, its precision, a CUDA peak
reset, which failed before CUDA was initialised); ``ctslice inspect-memory --measure`` (predicted and
measured GB per stage); the training step of the reference config (``benchmarks/train_step.py``); and
``ctslice infer`` of a 50 x 512 x 512 scan at 5 mm to 1 mm, ``--mode mean`` and ``--mode sample --steps
20``, with its wall time and its last output lines (per-stage times and the peak). Each command runs in
its own process with a time limit taken from what is left of the budget; a failed or timed-out row says
so and the table is still printed. The weights are random (time and memory do not depend on them): a
MAISI VAE of the released configuration saved as a user's weights file, and an untrained U-Net
checkpoint (``benchmarks/infer.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "configs" / "slice_interpolation_full_medium.yaml"
TINY = REPO / "configs" / "tiny_cpu.yaml"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
       "COLUMNS": "200"}  # Rich wraps at 80 columns when writing to a pipe


class Check:
    def __init__(self, budget_s: float) -> None:
        self.deadline = time.time() + budget_s
        self.rows: list[tuple[str, str, str, str]] = []  # check, status, seconds, result

    def left(self, cap: float) -> float:
        return max(1.0, min(cap, self.deadline - time.time()))

    def row(self, check: str, ok: bool | None, seconds: float | None, result: str, echo: bool = True) -> None:
        status = "ok" if ok else "skipped" if ok is None else "FAILED"
        self.rows.append((check, status, "" if seconds is None else f"{seconds:.1f}", result))
        if echo:
            print(f"[{status}] {check}: {result}", flush=True)

    def run(self, check: str, command: list[str], cap: float, last: int = 3, echo: bool = True,
            stdout_only: bool = False) -> tuple[bool, str]:
        """Run ``command``; a row with its wall time and its last ``last`` output lines (of stdout and stderr,
        or of stdout alone; stderr's last line if it failed). Returns (ok, stdout)."""
        if time.time() >= self.deadline:
            self.row(check, None, None, "no time left in the budget")
            return False, ""
        started = time.time()
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=self.left(cap))
        except subprocess.TimeoutExpired:
            self.row(check, False, time.time() - started, f"timed out after {time.time() - started:.0f} s")
            return False, ""
        text = done.stdout if stdout_only and done.returncode == 0 else done.stdout + done.stderr
        output = [line.strip() for line in text.splitlines() if line.strip()]
        self.row(check, done.returncode == 0, time.time() - started,
                 " | ".join(output[-last:]) or f"exit code {done.returncode}", echo=echo or done.returncode != 0)
        return done.returncode == 0, done.stdout

    def table(self, title: str) -> str:
        head = ("check", "status", "seconds", "result")
        widths = [max(len(r[k]) for r in [head, *self.rows]) for k in range(3)]
        lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, [*widths, 0], strict=True)).rstrip()]
        lines.append("  ".join("-" * w for w in [*widths, 6]))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, [*widths, 0], strict=True)).rstrip() for r in self.rows]
        return "\n".join(lines)


def check_device(check: Check, name: str) -> None:
    """``name`` resolved, configured, used and its CUDA peak reset (all that failed for ``cuda`` before)."""
    code = ("import torch, json\n"
            "from ctslice.hardware import configure, reset_peak_memory, peak_memory_bytes, resolve_device, "
            "resolve_precision, cpu_capability\n"
            f"d = resolve_device({name!r}); threads = configure(d); reset_peak_memory(d)\n"
            "x = torch.ones(1024, 1024, device=d); y = (x @ x).sum().item()\n"
            "gpu = torch.cuda.get_device_name(d) if d.type == 'cuda' else 'CPU ' + cpu_capability()\n"
            "print(f'-> {d} ({gpu}), {resolve_precision(\"auto\", d).line}, {threads} threads, '"
            "f'peak {peak_memory_bytes(d) / 2**20:.0f} MiB after a 1024^2 matmul')\n")
    check.run(f"--device {name}", [sys.executable, "-c", code], cap=60, last=1)


def inspect_memory(check: Check, config: Path, device: str, extra: list[str]) -> None:
    command = [sys.executable, "-m", "ctslice", "inspect-memory", "--config", str(config), "--measure", "--device",
               device, "--json", *extra]
    started = time.time()
    ok, stdout = check.run("inspect-memory --measure", command, cap=180, last=1, echo=False)
    if not ok:
        return
    check.rows.pop()  # replaced by one row per stage
    document = json.loads(stdout)
    seconds = time.time() - started
    check.row("inspect-memory precision", True, seconds, f"{document['precision']} on {document['measured_on']}")
    for part in document["measured"]:
        measured = "-" if part["measured_gb"] is None else f"{part['measured_gb']:.2f}"
        ratio = "" if part["ratio"] is None else f" (x{part['ratio']:.2f})"
        error = f" {part['error']}" if part["error"] else ""
        check.row(f"inspect-memory {part['part']}", part["measured_gb"] is not None, None,
                  f"predicted {part['predicted_gb']:.2f} GB, measured {measured} GB{ratio}{error}")


def train_step(check: Check, device: str, smoke: bool) -> None:
    variant = "tiny" if smoke else "full A100 config, 512 x 512, BF16"
    command = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--device", device, "--variants", variant,
               "--steps", "5" if smoke else "7", *(["--size", "64"] if smoke else [])]
    check.run(f"train step ({variant})", command, cap=200, last=1, stdout_only=True)


def make_inputs(folder: Path, smoke: bool) -> tuple[Path, Path, Path | None]:
    """A thick phantom scan (50 x 512 x 512 at 5 mm; smoke: 10 x 64 x 64), an untrained checkpoint, the VAE."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from infer import make_checkpoint

    from ctslice.data.pairs import simulate_pair
    from ctslice.data.phantom import make_phantom
    from ctslice.io import write_volume

    depth, size = (10, 64) if smoke else (50, 512)
    truth = make_phantom((depth * 5, size, size), (384 / size, 384 / size, 1.0), seed=0)
    scan = write_volume(simulate_pair(truth, 5.0, 1.0).thick, folder / "thick.nii.gz")
    checkpoint = make_checkpoint(folder, TINY if smoke else REFERENCE, [])
    vae = folder / "vae.pt"
    return scan, checkpoint, vae if vae.exists() else None


def infer(check: Check, scan: Path, checkpoint: Path, vae: Path | None, device: str, smoke: bool, folder: Path,
          size: str) -> None:
    base = [sys.executable, "-m", "ctslice", "infer", str(scan), "-o", str(folder / "thin.nii.gz"), "--checkpoint",
            str(checkpoint), "--device", device, *(["--vae-checkpoint", str(vae)] if vae else [])]
    steps = "2" if smoke else "20"
    check.run(f"infer {size} --mode mean", [*base, "--mode", "mean"], cap=120)
    check.run(f"infer {size} --mode sample --steps {steps}", [*base, "--mode", "sample", "--steps", steps], cap=180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny config, small volume, on the CPU")
    parser.add_argument("--budget", type=float, default=None, help="seconds for everything (default 450; smoke 600)")
    args = parser.parse_args()
    smoke = args.cpu_smoke
    check = Check(args.budget or (600 if smoke else 450))
    device = "cpu" if smoke else "cuda"
    import torch

    from ctslice.hardware import cpu_capability

    where = (f"CPU {cpu_capability()}, {os.cpu_count()} CPUs" if smoke
             else (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible"))
    title = (f"# gpu_check {'--cpu-smoke ' if smoke else ''}{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{where}, torch {torch.__version__}")
    started = time.time()
    for name in (["cpu", "auto"] if smoke else ["cuda", "cuda:0"]):
        check_device(check, name)
    config = TINY if smoke else REFERENCE
    inspect_memory(check, config, device, ["--volume", "40x48x48"] if smoke else ["--volume", "300x512x512",
                                                                                   "--ratio", "5"])
    train_step(check, device, smoke)
    with tempfile.TemporaryDirectory() as folder:
        made = time.time()
        scan, checkpoint, vae = make_inputs(Path(folder), smoke)
        size = "10x64x64" if smoke else "50x512x512"
        check.row("inputs (phantom scan, random weights)", True, time.time() - made, f"{scan.name} {size} at 5 mm")
        infer(check, scan, checkpoint, vae, device, smoke, Path(folder), size)
    print()
    print(check.table(f"{title}; total {time.time() - started:.0f} s"))
    sys.exit(0 if all(r[1] == "ok" for r in check.rows) else 1)


if __name__ == "__main__":
    main()
