"""Inference windows: the fewest that cover a volume with the least overlap asked for (exactly as MONAI's
sliding-window rule places them from the plan's window size and overlap fraction), the CPU's fused
attention, and windows of air left to the interpolation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from ctslice.models.window_plan import covered_by, plan_axis, plan_windows


def monai_starts(size: int, window: int, fraction: float) -> list[int]:
    """Window starts along one axis as MONAI's SlidingWindowInferer computes them."""
    interval = _get_scan_interval((size,), (window,), 1, (fraction,))
    return sorted({s[0].start for s in dense_patch_slices((size,), (window,), interval)})


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 700), largest_quarters=st.integers(1, 48), overlap=st.sampled_from([0.0, 0.0625, 0.125,
                                                                                                  0.25, 0.5]))
def test_monai_places_exactly_the_planned_windows_with_at_least_the_overlap(size, largest_quarters, overlap):
    largest = 4 * largest_quarters
    window, fraction, count = plan_axis(size, largest, overlap, 4)
    assert 0 <= fraction < 1 and window <= largest
    starts = monai_starts(size, window, fraction)
    assert len(starts) == count
    assert starts[0] == 0 and starts[-1] + window == size  # the whole axis, nothing beyond
    least = math.ceil(overlap * largest)
    for left, right in zip(starts, starts[1:], strict=False):
        assert left + window - right >= min(least, window)  # neighbours overlap by at least the least overlap
    # and no fewer windows of the largest size could have done it
    if count > 1:
        assert (count - 1) * largest - (count - 2) * least < size


def test_a_512_pixel_axis_takes_five_windows_of_116_not_six_of_128():
    """MONAI's fixed rule would run windows of 128 at 0, 112, 224, 336, 384: five, the last mostly repeated."""
    window, fraction, count = plan_axis(512, 128, 0.125, 4)
    assert (window, count) == (116, 5)
    assert monai_starts(512, window, fraction) == [0, 99, 198, 297, 396]


def test_a_volume_within_one_window_is_one_window_of_its_own_size():
    plan = plan_windows((30, 100, 90), (64, 128, 128), 0.125, 4)
    assert plan.roi == (30, 100, 90) and plan.counts == (1, 1, 1) and plan.windows == 1


def test_covered_by_is_the_length_planned_into_that_many_full_windows():
    for count in (2, 3, 5):
        size = covered_by(count, 64, 0.125)
        assert plan_axis(size, 64, 0.125, 4)[::2] == (64, count)


def test_fused_attention_on_the_cpu_gives_the_einsum_answer():
    """CPU inference runs MONAI's self-attention through ``scaled_dot_product_attention``: the same answer."""
    from ctslice.config import load_config
    from ctslice.models.diffusion import SliceDiffusion, build_model
    from tests.tiny import TINY

    config = load_config(None, TINY)
    fused = build_model(config, 1, "cpu").eval()
    einsum = SliceDiffusion(config, 1, flash_attention=False).eval()
    einsum.load_state_dict(fused.state_dict())
    assert fused.flash_attention and not einsum.flash_attention
    x = torch.randn(1, 1, 20, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 999)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, x, t), einsum(x, x, t), atol=1e-5, rtol=1e-4)


def _tiny_model(prediction_type: str = "v_prediction"):
    from ctslice.config import load_config
    from ctslice.models.diffusion import build_model
    from tests.tiny import TINY

    model = build_model(load_config(None, [*TINY, f"diffusion.prediction_type={prediction_type}"]), 1, "cpu").eval()
    torch.manual_seed(0)
    model.target_shift.fill_(0.3)
    model.target_scale.fill_(2.0)
    model.cond_shift.fill_(-0.2)
    model.cond_scale.fill_(1.5)
    return model


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
@pytest.mark.parametrize("timestep", [999, 500, 0])
def test_the_interpolation_output_makes_the_clean_estimate_the_condition(prediction_type, timestep):
    model = _tiny_model(prediction_type)
    cond = torch.randn(1, 1, 8, 8, 8)
    noisy = torch.randn(1, 1, 8, 8, 8)
    output = model.interpolation_output(noisy, model.condition(cond), timestep)
    thin = model.undiffused(model.clean_estimate(output, noisy, timestep), cond)
    torch.testing.assert_close(thin, cond, atol=1e-4, rtol=1e-4)


def test_windows_of_air_skip_the_unet_and_keep_the_interpolation(monkeypatch):
    """A tissue map with tissue in one corner: only the windows touching it run the U-Net; far from it the
    mean estimate is the condition (the interpolation) itself."""
    from ctslice.models.sampling import WindowedNetwork, mean_estimate

    model = _tiny_model()
    batches = []
    unet = model.unet.forward
    monkeypatch.setattr(model.unet, "forward", lambda x, t: batches.append(x.shape[0]) or unet(x, t))
    cond = torch.randn(1, 1, 24, 48, 48, generator=torch.Generator().manual_seed(1))
    tissue = torch.zeros(24, 48, 48, dtype=torch.bool)
    tissue[:4, :4, :4] = True
    network = WindowedNetwork(model, (16, 16, 16), 0.125, batch=1, tissue=tissue)
    assert network.windows(cond.shape[2:]) == 2 * 4 * 4
    with torch.no_grad():
        thin = mean_estimate(model, cond, network)
    assert sum(batches) == 1  # the one window that holds the corner
    torch.testing.assert_close(thin[..., 16:, 24:, 24:], cond[..., 16:, 24:, 24:], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(thin[..., :4, :4, :4], cond[..., :4, :4, :4], atol=1e-3)
    batches.clear()
    with torch.no_grad():
        everywhere = mean_estimate(model, cond, WindowedNetwork(model, (16, 16, 16), 0.125, batch=1))
    assert sum(batches) == 32
    torch.testing.assert_close(thin[..., :4, :4, :4], everywhere[..., :4, :4, :4])  # no neighbour to blend with
