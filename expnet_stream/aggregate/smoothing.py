"""Per-track temporal smoothing of the 29 expression coefficients, in stream time.

Two filters, both vectorised over the faces of a frame and the 29 dimensions:

* One-Euro (Casiez, Roussel, Vogel, CHI 2012): a low-pass filter whose cutoff rises with the signal's speed,
  ``cutoff = min_cutoff_hz + beta * |dx/dt|``, so a still face is smoothed hard (little jitter) and a fast
  expression change passes with little lag.
* EMA with a half-life in seconds: ``y += (1 - 0.5 ** (dt / half_life_s)) * (x - y)``; independent of frame rate.

:class:`TrackSmoother` keeps one filter state per track id (rows of preallocated arrays), returns smoothed copies
and never changes its input, so the raw coefficients stay available. Faces with track id ``-1`` (untracked) are
passed through unsmoothed: without an identity their coefficients cannot be related across frames.

>>> import numpy as np
>>> s = TrackSmoother("ema", half_life_s=0.1)
>>> s.update(np.array([0]), np.ones((1, 29), np.float32), 0.0)[0, 0].item()
1.0
>>> round(s.update(np.array([0]), np.zeros((1, 29), np.float32), 0.1)[0, 0].item(), 3)
0.5
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError

log = logging.getLogger(__name__)

SmoothingKind = Literal["one_euro", "ema", "none"]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_MIN_DT = 1e-4


def _alpha(cutoff_hz: npt.ArrayLike, dt: npt.ArrayLike) -> F64:
    """Smoothing factor of a first-order low-pass with ``cutoff_hz`` over a step of ``dt`` seconds."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff_hz, np.float64))
    dt_arr = np.asarray(dt, np.float64)
    out: F64 = 1.0 / (1.0 + tau / dt_arr)
    return out


def one_euro_step(
    x: F64,
    prev_x: F64,
    prev_dx: F64,
    dt: F64,
    *,
    min_cutoff_hz: float,
    beta: float,
    d_cutoff_hz: float,
) -> tuple[F64, F64]:
    """One One-Euro step for ``(N, D)`` signals with ``(N, 1)`` time steps; returns ``(x_hat, dx_hat)``."""
    dx = (x - prev_x) / dt
    a_d = _alpha(d_cutoff_hz, dt)
    dx_hat = prev_dx + a_d * (dx - prev_dx)
    cutoff = min_cutoff_hz + beta * np.abs(dx_hat)
    a = _alpha(cutoff, dt)
    x_hat = prev_x + a * (x - prev_x)
    return x_hat, dx_hat


class TrackSmoother:
    """Smoothing state per track id for one stream.

    Args:
        kind: ``"one_euro"``, ``"ema"`` or ``"none"`` (returns copies of the input).
        min_cutoff_hz, beta, d_cutoff_hz: One-Euro parameters (cutoff in Hz; ``beta`` in Hz per coefficient
            unit per second).
        half_life_s: EMA half-life in seconds.
        dims: coefficients per face.
    """

    def __init__(
        self,
        kind: SmoothingKind = "one_euro",
        *,
        min_cutoff_hz: float = 1.0,
        beta: float = 0.05,
        d_cutoff_hz: float = 1.0,
        half_life_s: float = 0.1,
        dims: int = 29,
    ) -> None:
        if kind not in ("one_euro", "ema", "none"):
            raise ConfigError(f"smoothing kind must be 'one_euro', 'ema' or 'none', got {kind!r}")
        if min_cutoff_hz <= 0 or d_cutoff_hz <= 0 or beta < 0 or half_life_s <= 0:
            raise ConfigError(
                "smoothing needs min_cutoff_hz > 0, d_cutoff_hz > 0, beta >= 0, half_life_s > 0; got "
                f"{min_cutoff_hz}, {d_cutoff_hz}, {beta}, {half_life_s}"
            )
        self.kind: SmoothingKind = kind
        self.min_cutoff_hz = min_cutoff_hz
        self.beta = beta
        self.d_cutoff_hz = d_cutoff_hz
        self.half_life_s = half_life_s
        self.dims = dims
        self._row: dict[int, int] = {}
        self._free: list[int] = []
        self._x = np.zeros((0, dims))
        self._dx = np.zeros((0, dims))
        self._t = np.zeros(0)

    def __len__(self) -> int:
        return len(self._row)

    def _rows(self, ids: list[int]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        rows = np.empty(len(ids), np.intp)
        new = np.zeros(len(ids), bool)
        for k, tid in enumerate(ids):
            r = self._row.get(tid)
            if r is None:
                new[k] = True
                if not self._free:
                    cap = self._x.shape[0]
                    grow = max(8, cap)
                    self._x = np.concatenate([self._x, np.zeros((grow, self.dims))])
                    self._dx = np.concatenate([self._dx, np.zeros((grow, self.dims))])
                    self._t = np.concatenate([self._t, np.zeros(grow)])
                    self._free.extend(range(cap + grow - 1, cap - 1, -1))
                r = self._free.pop()
                self._row[tid] = r
            rows[k] = r
        return rows, new

    def update(self, track_ids: npt.ArrayLike, coeffs: npt.ArrayLike, pts_time: float) -> F32:
        """Smoothed copy of ``coeffs`` ``(N, dims)`` for faces of tracks ``track_ids`` ``(N,)`` at ``pts_time``.

        A track's first face passes unchanged; a face at or before its track's previous time (out of order)
        also passes unchanged and leaves the state alone. Duplicate track ids in one call use the last face.
        """
        x = np.asarray(coeffs, np.float32).reshape(-1, self.dims)
        out: F32 = x.copy()
        ids = np.asarray(track_ids, np.int64).reshape(-1)
        if ids.shape[0] != x.shape[0]:
            raise ValueError(f"track_ids must have shape ({x.shape[0]},), got {ids.shape}")
        if self.kind == "none" or x.shape[0] == 0:
            return out
        sel = np.nonzero(ids >= 0)[0]
        if sel.size == 0:
            return out
        rows, new = self._rows([int(i) for i in ids[sel]])
        xs = x[sel].astype(np.float64)
        dt = pts_time - self._t[rows]
        step = ~new & (dt > _MIN_DT)
        if step.any():
            r = rows[step]
            d = dt[step][:, None]
            if self.kind == "one_euro":
                y, dy = one_euro_step(
                    xs[step],
                    self._x[r],
                    self._dx[r],
                    d,
                    min_cutoff_hz=self.min_cutoff_hz,
                    beta=self.beta,
                    d_cutoff_hz=self.d_cutoff_hz,
                )
                self._dx[r] = dy
            else:
                a = 1.0 - np.power(0.5, d / self.half_life_s)
                y = self._x[r] + a * (xs[step] - self._x[r])
            self._x[r] = y
            self._t[r] = pts_time
            out[sel[step]] = y.astype(np.float32)
        if new.any():
            r = rows[new]
            self._x[r] = xs[new]
            self._dx[r] = 0.0
            self._t[r] = pts_time
        return out

    def drop(self, track_ids: Iterable[int]) -> None:
        """Forget the state of ended tracks."""
        for tid in track_ids:
            r = self._row.pop(int(tid), None)
            if r is not None:
                self._free.append(r)

    def rename(self, mapping: dict[int, int]) -> None:
        """Give tracks new ids (``old -> new``; a takeover restoring the previous owner's ids)."""
        rows = {mapping.get(tid, tid): r for tid, r in self._row.items()}
        if len(rows) != len(self._row):
            raise ValueError(f"renaming {mapping} merges tracks")
        self._row = rows

    def clear(self) -> None:
        """Forget every track."""
        self.drop(list(self._row))


def jitter(coeffs: npt.ArrayLike) -> float:
    """Mean absolute frame-to-frame change of a ``(T, D)`` coefficient sequence (one track, in time order).

    >>> jitter([[0.0, 0.0], [1.0, -1.0], [1.0, -1.0]])
    0.5
    """
    c = np.asarray(coeffs, np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        return 0.0
    return float(np.abs(np.diff(c, axis=0)).mean())
