"""Batched least-squares machinery: every voxel is fitted at once, with no loop per voxel.

* :func:`inverse_small` inverts stacks of 1x1, 2x2 or 3x3 matrices in closed form (NaN
  where a matrix is singular), so one bad voxel never aborts a whole batch as
  ``numpy.linalg.inv`` would; :func:`solve_small` solves such systems with the voxel
  axis last (the layout the solver works in).
* :func:`levenberg_marquardt` is a bounded Levenberg-Marquardt solver over a batch of
  independent problems with a common number of data points: each problem keeps its own
  damping, steps are projected onto the box bounds (a parameter pushed against its
  bound is held there while the others take their step), and converged problems drop
  out of the active set so later iterations only touch the voxels still moving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: model(params (P, n), rows (n,)) -> (prediction (M, n), jacobian (P, M, n)). Arrays are
#: frames-major (the voxel axis last and contiguous), which suits recursions over frames.
#: ``rows`` are the indices of the problems in the batch, for per-problem constants. The
#: solver keeps the arrays it is given, so a model must return new arrays on every call.
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
    """J^T J for a (P, M, n) Jacobian, voxel axis last: (P, P, n)."""
    count = jacobian.shape[0]
    normal = np.empty((count, count, jacobian.shape[2]))
    for i in range(count):
        for j in range(i, count):
            normal[i, j] = np.einsum("mn,mn->n", jacobian[i], jacobian[j])
            normal[j, i] = normal[i, j]
    return normal


def _inverse_diagonal(a: np.ndarray) -> np.ndarray:
    """Diagonal of the inverse of each (P, P, n) matrix, P <= 3 (NaN or inf where singular)."""
    size = a.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if size == 1:
            return 1.0 / a[0]
        if size == 2:
            det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
            return np.stack([a[1, 1], a[0, 0]]) / det
        c00 = a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1]
        c11 = a[0, 0] * a[2, 2] - a[0, 2] * a[2, 0]
        c22 = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
        det = (
            a[0, 0] * c00
            + a[0, 1] * (a[1, 2] * a[2, 0] - a[1, 0] * a[2, 2])
            + a[0, 2] * (a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0])
        )
        return np.stack([c00, c11, c22]) / det


def solve_small(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Solve ``A x = b`` for stacks with the voxel axis last: A (P, P, n), b (P, n), P <= 3.

    Cramer's rule on contiguous rows (much faster than (n, P, P) stacks for tiny P);
    NaN where a matrix is singular, by the same relative test as :func:`inverse_small`.
    """
    a, g = matrices, vectors
    size = a.shape[0]
    scale = np.abs(a.reshape(size * size, -1)).max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if size == 1:
            det = a[0, 0]
            x = g / det
        elif size == 2:
            det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
            x = np.empty_like(g)
            np.divide(a[1, 1] * g[0] - a[0, 1] * g[1], det, out=x[0])
            np.divide(a[0, 0] * g[1] - a[1, 0] * g[0], det, out=x[1])
        elif size == 3:
            c00 = a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1]
            c01 = a[1, 2] * a[2, 0] - a[1, 0] * a[2, 2]
            c02 = a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0]
            det = a[0, 0] * c00 + a[0, 1] * c01 + a[0, 2] * c02
            # x = adj(A) b / det, adj(A)[i, j] = cofactor[j, i].
            c10 = a[0, 2] * a[2, 1] - a[0, 1] * a[2, 2]
            c11 = a[0, 0] * a[2, 2] - a[0, 2] * a[2, 0]
            c12 = a[0, 1] * a[2, 0] - a[0, 0] * a[2, 1]
            c20 = a[0, 1] * a[1, 2] - a[0, 2] * a[1, 1]
            c21 = a[0, 2] * a[1, 0] - a[0, 0] * a[1, 2]
            c22 = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
            x = np.empty_like(g)
            x[0] = (c00 * g[0] + c10 * g[1] + c20 * g[2]) / det
            x[1] = (c01 * g[0] + c11 * g[1] + c21 * g[2]) / det
            x[2] = (c02 * g[0] + c12 * g[1] + c22 * g[2]) / det
        else:
            raise ValueError(f"solve_small handles 1x1 to 3x3 systems, not {size}x{size}")
    singular = ~np.isfinite(det) | (np.abs(det) <= 1e-13 * np.maximum(scale, 1e-300) ** size)
    x[:, singular] = np.nan
    return x


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
    setol: float = 1e-2,
) -> LMResult:
    """Bounded Levenberg-Marquardt for n independent problems at once.

    ``params`` (P, n) are the starting values, ``data`` (M, n) the measurements;
    ``lower``/``upper`` (P,) are box bounds (steps are clipped onto them; a parameter on
    a bound that the step would push outside is held for that step while the others are
    solved for). Damping follows Marquardt (diagonal of J^T J), per problem. A problem
    stops when a step improves its residual sum of squares by less than ``rtol``
    relative (or by less than ``setol``^2 times the residual variance RSS / (M - P)), or
    moves no parameter by more than ``xtol`` relative or by more than ``setol`` times its
    standard error (the remaining optimisation error is then far below the noise; exact
    data, with RSS -> 0, still converge fully), or its damping exceeds 1e12.

    The problems still running form a working set that is compacted (copied down) only
    when fewer than 60 % of it are still running, so most iterations work on contiguous
    arrays without gathering or scattering. All per-problem arrays keep the problem axis
    last (contiguous), so every operation is a long vector operation.
    """
    lower = np.asarray(lower, dtype=float)[:, None]
    upper = np.asarray(upper, dtype=float)[:, None]
    data = np.asarray(data, dtype=float)
    count, n = np.shape(params)
    points = data.shape[0]
    final_params = np.clip(np.array(params, dtype=float), lower, upper)
    final_rss = np.full(n, np.nan)
    final_normal = np.full((count, count, n), np.nan)
    converged = np.zeros(n, dtype=bool)

    work = np.arange(n)
    p = final_params.copy()
    y = data
    prediction, jacobian = model(p, work)
    jacobian = np.asarray(jacobian, dtype=float)  # a new array: see Model
    residual = y - prediction
    rss = np.einsum("mn,mn->n", residual, residual)
    damping = np.full(n, 1e-3)
    live = np.isfinite(rss)
    iteration = 0
    dof = points - count

    def retire(selection: np.ndarray) -> None:
        index = work[selection]
        final_params[:, index] = p[:, selection]
        final_rss[index] = rss[selection]
        final_normal[:, :, index] = _normal_matrix(jacobian[:, :, selection])

    while live.any() and iteration < max_iterations:
        iteration += 1
        damped = _normal_matrix(jacobian)
        if dof > 0 and setol > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                variance = _inverse_diagonal(damped) * (rss / dof)
        gradient = np.einsum("pmn,mn->pn", jacobian, residual)
        for i in range(count):
            damped[i, i] += damping * np.maximum(damped[i, i], 1e-30)
        # A parameter on a bound whose descent direction points outside is held there for
        # this step (identity row and column), so the others take their own full step
        # instead of a clipped joint one; without this, voxels at a bound (e.g. ADC = 0 in
        # air) crawl to max_iterations.
        held = ((p <= lower) & (gradient < 0)) | ((p >= upper) & (gradient > 0))
        if held.any():
            free = ~held
            damped *= free[:, None, :] & free[None, :, :]
            for i in range(count):
                damped[i, i] += held[i]
            gradient[held] = 0.0
        step = solve_small(damped, gradient)
        bad_step = ~np.isfinite(step.sum(axis=0))
        # Problems already done (still in the working set until it is compacted) stay put,
        # so their trial equals their current state and the arrays can be swapped below.
        step[:, bad_step | ~live] = 0.0
        trial = np.clip(p + step, lower, upper)
        trial_prediction, trial_jacobian = model(trial, work)
        trial_residual = y - trial_prediction
        trial_rss = np.einsum("mn,mn->n", trial_residual, trial_residual)
        better = live & np.isfinite(trial_rss) & (trial_rss < rss)
        delta = np.abs(trial - p)
        moved = (delta / (np.abs(p) + xtol)).max(axis=0)
        gain = np.where(better, rss - trial_rss, 0.0)
        old_rss = rss

        if np.all(better | ~live):  # usual: take the trial arrays instead of copying
            p, residual, jacobian, rss = trial, trial_residual, trial_jacobian, trial_rss
        else:
            rss = rss.copy()
            np.copyto(p, trial, where=better)
            np.copyto(residual, trial_residual, where=better)
            np.copyto(jacobian, trial_jacobian, where=better)
            np.copyto(rss, trial_rss, where=better)
        # A step is "tiny" when it moves no parameter by more than xtol relative or (with
        # noise) by more than setol standard errors: what is left to gain is far inside
        # the noise (noise-only voxels otherwise converge slowly).
        tiny = moved <= xtol
        if dof > 0 and setol > 0:
            tiny |= (delta <= setol * np.sqrt(variance)).all(axis=0)
        done = better & (tiny | (gain <= rtol * np.maximum(old_rss, 1e-300)))
        if dof > 0 and setol > 0:
            # Also when a step lowered the RSS by less than setol^2 noise variances (the
            # fit's chi^2 by 1e-4 in the default): a flat valley, where steps zig-zag
            # without changing the fit by anything measurable.
            done |= better & (gain <= setol**2 * old_rss / dof)
        # A tiny, nearly undamped step that does not lower the RSS: the problem sits at its
        # (possibly bound-constrained) minimum; stop rather than raise the damping to 1e12.
        done |= ~better & tiny & (damping <= 1.0)
        damping = np.where(better, np.maximum(damping * 0.3, 1e-12), damping * 10.0)
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

    with np.errstate(invalid="ignore", divide="ignore"):
        variance = final_rss / dof if dof > 0 else np.full(n, np.nan)
        covariance = inverse_small(np.moveaxis(final_normal, -1, 0)) * variance[:, None, None]
    return LMResult(final_params, final_rss, covariance, converged, iteration)


def standard_errors(covariance: np.ndarray) -> np.ndarray:
    """Square roots of the diagonal of stacked covariance matrices (NaN where negative)."""
    diagonal = np.einsum("npp->np", covariance)
    with np.errstate(invalid="ignore"):
        return np.where(diagonal >= 0, np.sqrt(np.abs(diagonal)), np.nan)
