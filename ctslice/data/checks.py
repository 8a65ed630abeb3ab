"""Sanity checks that a volume is a usable CT scan in HU, run on every case before it enters the cache."""

from __future__ import annotations

import numpy as np

from ctslice.errors import InputError
from ctslice.io.volume import Volume


def check_ct_volume(volume: Volume, role: str) -> None:
    """Raise InputError if ``volume`` (the ``role`` series: thick/thin/scan) is not plausible CT in HU.

    CT always images some air or lung (below -200 HU) and some tissue (above -200 HU); a volume
    without both is blank, cropped to nothing, or stored without its rescale to HU.
    """
    values = volume.array
    if values.ndim != 3 or min(values.shape) < 2:
        raise InputError(f"the {role} series is not a 3D volume (shape {values.shape})")
    sample = values[:: max(1, values.shape[0] // 16)].astype(np.float32)
    if float(sample.std()) < 1.0 and float(values.std()) < 1.0:
        raise InputError(f"the {role} series is constant ({float(values.flat[0]):.0f} HU everywhere): a blank "
                         "export or a mask, not a CT scan")
    low, high = np.percentile(sample, [1, 99])
    if low > -200:
        raise InputError(f"the {role} series has no air or lung (1st percentile {low:.0f} HU): values do not "
                         "look like HU (missing rescale slope/intercept?)")
    if high < -200:
        raise InputError(f"the {role} series has no tissue (99th percentile {high:.0f} HU): an empty field of "
                         "view, not a CT scan")
