"""Signal level in dBFS, one definition for the meter, the energy detector and segment planning."""

from __future__ import annotations

import numpy as np

_RMS_EPS = 1e-10  # keeps log10 finite on digital silence: -200 dBFS, far below any recording


def rms_db(x, axis: int | None = None):
    """RMS level in dBFS (a full-scale sine is about -3; silence gives -200), over ``axis`` (all
    of ``x`` by default: a float; else an array)."""
    x = np.asarray(x, dtype=np.float64)
    if axis is None and x.size == 0:
        return 20.0 * np.log10(_RMS_EPS)
    rms = np.sqrt(np.mean(np.square(x), axis=axis))
    level = 20.0 * np.log10(np.maximum(rms, _RMS_EPS))
    return float(level) if axis is None else level
