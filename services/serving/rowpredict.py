"""One row through LightGBM without its per-call setup.

``Booster.predict`` prepares a predictor on every call (parameters parsed, buffers sized): about 0.1 ms, more than
scoring one row takes. LightGBM's C API has a path for exactly this case, ``LGBM_BoosterPredictForMatSingleRowFast``,
prepared once per model (``...FastInit``) and then called per row; the Python package does not expose it, so it is
called here through the library the package loaded. Same numbers as ``Booster.predict`` (a test compares them).

A prepared handle must not be used by two threads at once: calls are serialized by a lock (uncontended on the
event loop, where one-row requests are scored)."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

C_API_PREDICT_NORMAL = 0
C_API_DTYPE_FLOAT64 = 1


class SingleRowPredictor:
    def __init__(self, booster: Any) -> None:
        from lightgbm.basic import _LIB, _safe_call

        self._lib = _LIB
        self._safe_call = _safe_call
        self.columns = booster.num_feature()
        self._handle = ctypes.c_void_p()
        # Buffers and their pointers made once: a call copies the row in and reads the score out.
        self._in = np.zeros(self.columns, dtype=np.float64)
        self._out = np.zeros(1, dtype=np.float64)
        self._out_len = ctypes.c_int64(0)
        self._in_ptr = self._in.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len_ref = ctypes.byref(self._out_len)
        self._lock = threading.Lock()
        self._booster = booster  # the handle points into it
        self._fast = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(C_API_PREDICT_NORMAL),
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(booster.best_iteration),  # what Booster.predict uses by default (<= 0: all)
                ctypes.c_int(C_API_DTYPE_FLOAT64),
                ctypes.c_int32(self.columns),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(self._handle),
            )
        )

    @classmethod
    def for_booster(cls, booster: Any) -> SingleRowPredictor | None:
        """None for models with several outputs per row (multiclass), which this does not cover."""
        try:
            if booster.num_model_per_iteration() != 1:
                return None
            return cls(booster)
        except Exception:  # an older or different LightGBM build: Booster.predict answers
            return None

    def predict(self, row: np.ndarray) -> float:
        """``row``: the model's features in order (float64)."""
        with self._lock:
            self._in[:] = row
            self._safe_call(self._fast(self._handle, self._in_ptr, self._out_len_ref, self._out_ptr))
            return float(self._out[0])

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            self._lib.LGBM_FastConfigFree(handle)
