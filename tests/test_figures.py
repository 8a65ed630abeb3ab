"""Pictures: the HU window parser, the per-case validation figure, and a run's ``progress.png``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctslice.errors import InputError
from ctslice.evaluation.figures import DEFAULT_WINDOW, WINDOWS, Window, case_figure, parse_window
from ctslice.training import progress_figure
from ctslice.training.progress_figure import ProgressFigure, Series, draw_progress, moving_mean, progress_series


def png_pixels(path) -> np.ndarray:
    """The image as (height, width, RGB) floats in [0, 1]; fails unless the file is a readable PNG."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)[..., :3]


def drawn_fraction(pixels: np.ndarray) -> float:
    """Share of pixels that are not the white canvas."""
    return float(np.mean(np.any(pixels < 0.97, axis=-1)))


# ---- window


@pytest.mark.parametrize(("text", "width", "level"), [("lung", 1500, -600), ("soft", 400, 40), ("bone", 1800, 400),
                                                      ("Lung", 1500, -600), (" bone ", 1800, 400),
                                                      ("350,50", 350, 50), ("1500, -600", 1500, -600),
                                                      ("2e3,0", 2000, 0), ("80.5,+35", 80.5, 35)])
def test_window_presets_and_numbers(text, width, level):
    window = parse_window(text)
    assert (window.width, window.level) == (width, level)
    assert (window.low, window.high) == (level - width / 2, level + width / 2)


def test_no_window_is_the_wide_default_and_a_window_passes_through():
    assert parse_window(None) == DEFAULT_WINDOW == Window(2000, 0)
    assert parse_window(WINDOWS["soft"]) is WINDOWS["soft"]


@pytest.mark.parametrize("text", ["", "wide", "brain", "400", "400,40,1", "0,40", "-400,40", "nan,40", "400,inf",
                                  "a,b", "1e999,0", "400;40", ",40"])
def test_a_bad_window_is_an_input_error_naming_the_setting(text):
    with pytest.raises(InputError, match=r"^window .*lung, soft, bone, or W,L"):
        parse_window(text)


def test_validate_refuses_a_bad_window_before_any_work(tmp_path):
    from ctslice.commands.validate import run_validate

    with pytest.raises(InputError, match="^--window"):  # before the (missing) cache or checkpoint is looked at
        run_validate(tmp_path / "none.pt", tmp_path / "none.h5", tmp_path / "none.json", out=tmp_path / "report",
                     window="wide")
    assert not (tmp_path / "report").exists()


# ---- per-case validation figure


def case_arrays(shape=(40, 48, 48)):
    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape)
    truth = np.where((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2 < (shape[1] / 2.5) ** 2, 40.0, -1000.0)
    truth = (truth + 100.0 * (np.sin(z / 3.0) > 0.8)).astype(np.float32)  # within the soft window
    thick = truth.copy()
    thick[1::2] = thick[::2][: thick[1::2].shape[0]]
    model = truth + rng.normal(0, 20, shape).astype(np.float32)
    return {"thick": thick, "cubic": (thick + truth) / 2, "model": model, "truth": truth}


SCORES = {name: {"psnr": psnr, "ssim": 0.91, "ssim_coronal": 0.92, "ssim_sagittal": 0.93, "hu_mae": 7.5}
          for name, psnr in (("thick", 30.0), ("cubic", 32.0), ("model", 35.0))}


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (12.0, 12.0, 1.0)], ids=["isotropic", "flat-z"])
def test_case_figure_is_a_tight_grid(tmp_path, spacing):
    path = case_figure(tmp_path / "figures" / "case0.png", spacing, **case_arrays(), scores=SCORES, window="soft",
                       title="case0")
    assert path == tmp_path / "figures" / "case0.png"
    pixels = png_pixels(path)
    height, width = pixels.shape[:2]
    assert 1200 < width < 1800 and 500 < height < 1600  # five 360-pixel columns and a colour bar; 3 rows
    assert drawn_fraction(pixels) > 0.75, "mostly blank canvas"
    assert not list(path.parent.glob(".*.tmp"))


def test_case_figure_shows_the_window(tmp_path):
    """40 HU is mid-grey in the soft window (-160..240 HU) and light grey in the lung window (-1350..150 HU)."""
    arrays = {name: np.full((20, 16, 16), 40.0, np.float32) for name in ("thick", "cubic", "model", "truth")}
    grey = {}
    for name in ("soft", "lung"):
        pixels = png_pixels(case_figure(tmp_path / f"{name}.png", (1.0, 1.0, 1.0), **arrays, window=name))
        grey[name] = float(np.median(pixels[pixels.shape[0] // 2, : pixels.shape[1] // 3]))
    assert grey["soft"] == pytest.approx((40 + 160) / 400, abs=0.02)
    assert grey["lung"] == pytest.approx((40 + 1350) / 1500, abs=0.02)


# ---- progress.png

LOG = [
    {"kind": "train", "step": 1, "loss": 1.0, "lr": 1e-3, "step_time": 0.5, "grad_norm": 1.0},
    {"kind": "train", "step": 2, "loss": 0.8, "lr": 9e-4, "step_time": 0.4, "grad_norm": 1.0},
    {"kind": "validation", "step": 2, "val_loss": 0.7, "psnr": 30.0, "ssim": 0.9, "hu_mae": 9.0,
     "cubic_psnr": 31.0, "cubic_ssim": 0.91},
    {"kind": "train", "step": 3, "loss": None, "lr": 8e-4, "step_time": 0.4, "grad_norm": None},  # a skipped step
    {"kind": "train", "step": 4, "loss": 0.5, "lr": 7e-4, "step_time": 0.45, "grad_norm": 1.0},
    {"kind": "final_validation", "step": 4, "val_loss": 0.6, "psnr": 32.5, "ssim": 0.92, "hu_mae": 8.0,
     "cubic_psnr": 31.0, "cubic_ssim": 0.91},
]


def write_log(run_dir, records=LOG):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return run_dir


def test_progress_series_reads_each_curve_and_skips_missing_numbers():
    series = progress_series(LOG)
    assert (series.loss.steps, series.loss.values) == ([1, 2, 4], [1.0, 0.8, 0.5])
    assert series.lr.steps == series.step_time.steps == [1, 2, 3, 4]
    assert (series.psnr.steps, series.psnr.values) == ([2, 4], [30.0, 32.5])
    assert (series.cubic_psnr.steps, series.cubic_psnr.values) == ([2, 4], [31.0, 31.0])
    assert series.val_loss.values == [0.7, 0.6]
    older = [{k: v for k, v in r.items() if not k.startswith("cubic")} for r in LOG]  # logs before cubic was logged
    assert progress_series(older).cubic_psnr.steps == []


def test_moving_mean_of_the_training_loss():
    smoothed = moving_mean(Series([1, 2, 3, 5, 8], [1.0, 2.0, 3.0, 4.0, 8.0]), 2)
    assert (smoothed.steps, smoothed.values) == ([2, 3, 5, 8], [1.5, 2.5, 3.5, 6.0])


def test_draw_progress_plots_the_logged_points(tmp_path, monkeypatch):
    drawn = []
    real_save = progress_figure.save_png
    monkeypatch.setattr(progress_figure, "save_png", lambda figure, path, **o: drawn.append(figure) or real_save(
        figure, path, **o))
    path = draw_progress(write_log(tmp_path / "run"))
    assert path == tmp_path / "run" / "progress.png"
    assert png_pixels(path).shape[:2] == (800, 1200)
    points = {axis.get_title(): {line.get_label(): list(line.get_xdata()) for line in axis.get_lines()}
              for axis in drawn[0].axes}
    assert points == {"loss": {"training": [1, 2, 4], "validation (fixed patches)": [2, 4]},
                      "validation PSNR (dB)": {"model": [2, 4], "cubic": [2, 4]},
                      "seconds per step": {"_child0": [1, 2, 3, 4]}, "learning rate": {"_child0": [1, 2, 3, 4]}}


def test_a_long_log_adds_the_moving_mean(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(progress_figure, "save_png", lambda figure, path, **o: drawn.append(figure))
    draw_progress(write_log(tmp_path / "run", [{"kind": "train", "step": s, "loss": 1 / s, "lr": 1e-3,
                                                 "step_time": 0.1} for s in range(1, 26)]))
    lines = {line.get_label(): list(line.get_xdata()) for line in drawn[0].axes[0].get_lines()}
    assert lines["training, mean of 10"] == list(range(10, 26))


def test_an_empty_log_still_draws(tmp_path):
    (tmp_path / "run").mkdir()
    assert png_pixels(draw_progress(tmp_path / "run")).shape[:2] == (800, 1200)


def test_a_drawing_failure_warns_once_and_does_not_raise(tmp_path, caplog):
    (tmp_path / "run").mkdir()
    # read_log refuses the line: drawing fails
    (tmp_path / "run" / "log.jsonl").write_text("{not json\n", encoding="utf-8")
    hook = ProgressFigure(tmp_path / "run")
    hook.redraw()
    hook.redraw()
    warnings = [r.getMessage() for r in caplog.records if r.name == progress_figure.__name__]
    assert len(warnings) == 1 and caplog.records[0].levelname == "WARNING" and "progress.png" in warnings[0]
    assert not (tmp_path / "run" / "progress.png").exists()


# ---- the trainer's hook


TINY_RUN = ("training.max_steps=4", "training.val_interval=2", "training.checkpoint_interval=100")


def test_training_redraws_progress_at_each_validation_with_cubic_alongside(dataset, tmp_path, monkeypatch, one_thread):
    from ctslice.data.cache import Cache
    from ctslice.data.splits import read_splits
    from ctslice.evaluation.metrics import psnr
    from ctslice.io.geometry import interpolate
    from ctslice.training.run_log import read_log
    from ctslice.training.trainer import train
    from tests.tiny import tiny_config

    calls = []
    real_draw = progress_figure.draw_progress
    monkeypatch.setattr(progress_figure, "draw_progress", lambda run_dir: calls.append(run_dir) or real_draw(run_dir))
    train(tiny_config(dataset, *TINY_RUN), tmp_path / "run")
    assert calls == [tmp_path / "run"] * 2  # the validation at step 2, the final one at step 4
    assert png_pixels(tmp_path / "run" / "progress.png").shape[:2] == (800, 1200)
    validations = [r for r in read_log(tmp_path / "run") if r["kind"] in ("validation", "final_validation")]
    cache_path, splits = dataset
    with Cache(cache_path) as cache:
        cubic = [psnr(interpolate(cache.volume(c, "thick"), method="cubic", grid=cache.grid(c, "thin")).array,
                      cache.volume(c, "thin").array) for c in read_splits(splits, cache.case_ids())["val"]]
    assert [r["cubic_psnr"] for r in validations] == [pytest.approx(float(np.mean(cubic)), abs=1e-6)] * 2
    assert all(0 < r["cubic_ssim"] <= 1 for r in validations)


def test_a_progress_figure_failure_never_stops_training(dataset, tmp_path, monkeypatch, one_thread, caplog):
    from ctslice.training.trainer import train
    from tests.tiny import tiny_config

    monkeypatch.setattr(progress_figure, "draw_progress", lambda run_dir: 1 / 0)
    result = train(tiny_config(dataset, *TINY_RUN), tmp_path / "run")
    assert result.step == 4 and (tmp_path / "run" / "checkpoints" / "final.pt").exists()
    warnings = [r.getMessage() for r in caplog.records if r.name == progress_figure.__name__]
    assert len(warnings) == 1 and "ZeroDivisionError" in warnings[0]
