"""Where inference windows go: the fewest windows that cover a volume with the least overlap asked for,
exactly as MONAI's sliding-window rule places them from the plan's window size and overlap fraction."""

import math

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
    for left, right in zip(starts, starts[1:]):
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
    import torch

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
