"""Batched least-squares machinery: every voxel is fitted at once, with no loop per voxel.

* :func:`inverse_small` inverts stacks of 1x1, 2x2 or 3x3 matrices in closed form (NaN
  where a matrix is singular), so one bad voxel never aborts a whole batch as
  ``numpy.linalg.inv`` would.
* :func:`levenberg_marquardt` is a bounded Levenberg-Marquardt solver over a batch of
  independent problems with a common number of data points: each problem keeps its own
  damping, steps are projected onto the box bounds, and converged problems drop out of
  the active set so later iterations only touch the voxels still moving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: model(params (P, n), rows (n,)) -> (prediction (M, n), jacobian (P, M, n)). Arrays are
#: frames-major (the voxel axis last and contiguous), which suits recursions over frames.
#: ``rows`` are the indices of the problems in the batch, for per-problem constants.
Model = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def inverse_small(matrices: np.ndarray) -> np.ndarray:
    """Inverse of each matrix in a stack ``(..., P, P)`` with P <= 3; NaN where singular."""
    a = np.asarray(matrices, dtype=float)
    size = a.shape[-1]
    scale = np.max(np.abs(a), axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        if size == 1:
            det = a[..., 0, 0]
            inverse = (1.0 / det)[..., None, None]
        elif size == 2:
            det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
            inverse = np.empty_like(a)
            inverse[..., 0, 0] = a[..., 1, 1]
            inverse[..., 1, 1] = a[..., 0, 0]
            inverse[..., 0, 1] = -a[..., 0, 1]
            inverse[..., 1, 0] = -a[..., 1, 0]
            inverse /= det[..., None, None]
        elif size == 3:
            cofactor = np.empty_like(a)
            for i in range(3):
                for j in range(3):
                    rows = [r for r in range(3) if r != i]
                    cols = [c for c in range(3) if c != j]
                    minor = (
                        a[..., rows[0], cols[0]] * a[..., rows[1], cols[1]]
                        - a[..., rows[0], cols[1]] * a[..., rows[1], cols[0]]
                    )
                    cofactor[..., i, j] = (-1) ** (i + j) * minor
            det = np.sum(a[..., 0, :] * cofactor[..., 0, :], axis=-1)
            inverse = np.swapaxes(cofactor, -1, -2) / det[..., None, None]
        else:
            raise ValueError(f"inverse_small handles 1x1 to 3x3 matrices, not {size}x{size}")
    # Relative determinant test: a near-singular normal matrix means the parameters are
    # not identifiable from the data (e.g. a flat curve), so no estimate is given.
    singular = ~np.isfinite(det) | (np.abs(det) <= 1e-13 * np.maximum(scale, 1e-300) ** size)
    inverse[singular] = np.nan
    return inverse


@dataclass
class LMResult:
    """Outcome of :func:`levenberg_marquardt` for a batch of n problems."""

    params: np.ndarray  # (P, n)
    rss: np.ndarray  # (n,) residual sum of squares at params
    covariance: np.ndarray  # (n, P, P): rss / (M - P) * inv(J^T J); NaN if not estimable
    converged: np.ndarray  # (n,) bool
    iterations: int


def _normal_matrix(jacobian: np.ndarray) -> np.ndarray:
    """J^T J for a (P, M, n) Jacobian: (n, P, P)."""
    count = jacobian.shape[0]
    normal = np.empty((jacobian.shape[2], count, count))
    for i in range(count):
        for j in range(i, count):
            normal[:, i, j] = normal[:, j, i] = np.einsum("mn,mn->n", jacobian[i], jacobian[j])
    return normal


def levenberg_marquardt(
    model: Model,
    params: np.ndarray,
    data: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    max_iterations: int = 50,
    rtol: float = 1e-8,
    xtol: float = 1e-6,
) -> LMResult:
    """Bounded Levenberg-Marquardt for n independent problems at once.

    ``params`` (P, n) are the starting values, ``data`` (M, n) the measurements;
    ``lower``/``upper`` (P,) are box bounds (steps are clipped onto them). Damping follows
    Marquardt (diagonal of J^T J), per problem. A problem stops when a step improves its
    residual sum of squares by less than ``rtol`` relative, or moves no parameter by more
    than ``xtol`` relative, or its damping exceeds 1e12.

    The problems still running form a working set that is compacted (copied down) only
    when fewer than 60 % of it are still running, so most iterations work on contiguous
    arrays without gathering or scattering.
    """
    lower = np.asarray(lower, dtype=float)[:, None]
    upper = np.asarray(upper, dtype=float)[:, None]
    data = np.asarray(data, dtype=float)
    count, n = np.shape(params)
    points = data.shape[0]
    final_params = np.clip(np.array(params, dtype=float), lower, upper)
    final_rss = np.full(n, np.nan)
    final_normal = np.full((n, count, count), np.nan)
    converged = np.zeros(n, dtype=bool)

    work = np.arange(n)
    p = final_params.copy()
    y = data
    prediction, jacobian = model(p, work)
    jacobian = np.array(jacobian, dtype=float)
    residual = y - prediction
    rss = np.einsum("mn,mn->n", residual, residual)
    damping = np.full(n, 1e-3)
    live = np.isfinite(rss)
    eye = np.eye(count)
    iteration = 0

    def retire(selection: np.ndarray) -> None:
        index = work[selection]
        final_params[:, index] = p[:, selection]
        final_rss[index] = rss[selection]
        final_normal[index] = _normal_matrix(jacobian[:, :, selection])

    while live.any() and iteration < max_iterations:
        iteration += 1
        normal = _normal_matrix(jacobian)
        gradient = np.einsum("pmn,mn->np", jacobian, residual)
        diagonal = np.einsum("npp->np", normal)
        damped = normal + (damping[:, None] * np.maximum(diagonal, 1e-30))[:, :, None] * eye
        step = np.einsum("npq,nq->pn", inverse_small(damped), gradient)
        bad_step = ~np.all(np.isfinite(step), axis=0)
        step[:, bad_step] = 0.0
        trial = np.clip(p + step, lower, upper)
        trial_prediction, trial_jacobian = model(trial, work)
        trial_residual = y - trial_prediction
        trial_rss = np.einsum("mn,mn->n", trial_residual, trial_residual)
        better = live & np.isfinite(trial_rss) & (trial_rss < rss)
        moved = np.max(np.abs(trial - p) / (np.abs(p) + xtol), axis=0)
        gain = np.where(better, rss - trial_rss, 0.0)
        old_rss = rss.copy()

        np.copyto(p, trial, where=better)
        np.copyto(residual, trial_residual, where=better)
        np.copyto(jacobian, trial_jacobian, where=better)
        np.copyto(rss, trial_rss, where=better)
        damping = np.where(better, np.maximum(damping * 0.3, 1e-12), damping * 10.0)

        done = better & ((gain <= rtol * np.maximum(old_rss, 1e-300)) | (moved <= xtol))
        done |= bad_step & ~better
        done |= damping > 1e12
        done |= rss <= 1e-300
        done &= live
        converged[work[done]] = True
        live &= ~done
        if live.sum() < 0.6 * live.size:
            retire(~live)
            keep = np.flatnonzero(live)
            work, p, residual, rss, damping = (
                work[keep],
                p[:, keep],
                residual[:, keep],
                rss[keep],
                damping[keep],
            )
            jacobian = jacobian[:, :, keep]
            y = y[:, keep]
            live = np.ones(keep.size, dtype=bool)
    retire(np.ones(work.size, dtype=bool))

    dof = points - count
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = final_rss / dof if dof > 0 else np.full(n, np.nan)
        covariance = inverse_small(final_normal) * variance[:, None, None]
    return LMResult(final_params, final_rss, covariance, converged, iteration)


def standard_errors(covariance: np.ndarray) -> np.ndarray:
    """Square roots of the diagonal of stacked covariance matrices (NaN where negative)."""
    diagonal = np.einsum("npp->np", covariance)
    with np.errstate(invalid="ignore"):
        return np.where(diagonal >= 0, np.sqrt(np.abs(diagonal)), np.nan)
