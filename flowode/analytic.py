"""Exact models for ground truth: Gaussian-mixture data and a single Gaussian, plus ``reference_solve``.

If the data are ``p_0 = sum_k w_k N(mu_k, s_k^2 I)``, then ``xbar = x0 + sigma * eps`` has density
``p_sigma(xbar) = sum_k w_k N(mu_k, (s_k^2 + sigma^2) I)`` and Tweedie's formula gives the exact
noise prediction (Efron 2011; Karras et al. 2022, eq. 3):

    eps(xbar, sigma) = -sigma * grad log p_sigma(xbar) = sigma * sum_k r_k (xbar - mu_k) / (s_k^2 + sigma^2),

with responsibilities ``r_k`` from a log-sum-exp. This form is finite at ``sigma = 0``. For one
Gaussian ``N(mu, diag(s^2))`` the probability-flow ODE ``d xbar/d sigma = eps`` has the closed form

    xbar(sigma_1) = mu + (xbar(sigma_0) - mu) * sqrt((s^2 + sigma_1^2) / (s^2 + sigma_0^2)).

These models know ``sigma`` directly (no ``t`` round trip), so they can be evaluated at any
``sigma >= 0``; they still count NFE like any :class:`~flowode.models.EpsilonModel`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .models import EpsilonModel
from .parameterization import from_eps_x0, x0_from_eps
from .schedules import Schedule

__all__ = ["GaussianMixture", "Gaussian", "AnalyticModel", "reference_solve", "gmm_ring", "gmm_grid",
           "gmm_random"]


class AnalyticModel(EpsilonModel):
    """An :class:`EpsilonModel` whose "network" is an exact function of ``(x, sigma)``.

    ``exact_eps(x, sigma) -> eps``; the raw output is converted to the requested ``prediction`` by
    :func:`~flowode.parameterization.from_eps_x0`, so the parameterisation conversions can be
    tested against it. Per-sample noise levels are evaluated one distinct level at a time.
    """

    defined_at_zero = True
    per_sample_network = True

    def __init__(self, exact_eps, schedule: Schedule, prediction: str = "eps", *,  # type: ignore[no-untyped-def]
                 data_mean: Optional[Tensor] = None, **kwargs) -> None:
        self.exact_eps = exact_eps
        # E[x0], the exact x0 prediction at sigma = inf (zero terminal SNR), where x/alpha is undefined
        self.data_mean = data_mean
        super().__init__(self._t_fn, schedule, prediction, **kwargs)

    def _t_fn(self, x: Tensor, t: Tensor) -> Tensor:  # used only if someone calls fn directly
        sigma = float(self.schedule.sigma(float(t[0])))
        return self._raw_from_eps(x, sigma)

    def _raw_from_eps(self, x: Tensor, sigma: float) -> Tensor:
        eps = self.exact_eps(x, sigma)
        if self.prediction == "eps":
            return eps
        alpha = float(self.schedule.alpha_from_sigma(sigma))
        std = float(self.schedule.std_from_sigma(sigma))
        if math.isinf(sigma):  # zero terminal SNR: x = eps, and the posterior mean is the data mean
            if self.data_mean is None:
                raise ValueError("this analytic model has no `data_mean`, needed for x0 at sigma = inf.")
            x0 = self.data_mean.to(x).expand_as(x)
        else:
            x0 = x0_from_eps(x, eps, alpha, sigma)
        return from_eps_x0(self.prediction, eps, x0, alpha, std)

    def network(self, x: Tensor, sigma: Union[float, Tensor]) -> Tensor:
        if not isinstance(sigma, Tensor):
            return self._raw_from_eps(x, sigma)
        out = torch.empty_like(x)
        levels = torch.unique(sigma).tolist()
        self.network_passes += len(levels) - 1  # one call per distinct level (the caller counted one)
        for v in levels:
            idx = (sigma == v).nonzero().flatten().to(x.device)
            out[idx] = self._raw_from_eps(x[idx], float(v))
        return out


class GaussianMixture:
    """Isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)`` in ``D`` dimensions.

    Args:
        means: ``(K, D)``.
        stds: ``(K,)`` or a scalar: per-component standard deviation ``s_k > 0``.
        weights: ``(K,)`` positive, normalised here; default uniform.
        shape: event shape of one sample (default ``(D,)``); e.g. ``(1, 8, 8)`` for image-shaped data.
    """

    def __init__(self, means: Union[Tensor, Sequence], stds: Union[float, Tensor, Sequence] = 0.1,
                 weights: Optional[Union[Tensor, Sequence]] = None, shape: Optional[tuple[int, ...]] = None) -> None:
        self.means = torch.as_tensor(np.asarray(means, dtype=np.float64))
        if self.means.dim() != 2:
            raise ValueError(f"`means` must be (K, D), got shape {tuple(self.means.shape)}.")
        k, d = self.means.shape
        self.stds = torch.as_tensor(np.broadcast_to(np.asarray(stds, dtype=np.float64), (k,)).copy())
        if (self.stds <= 0).any():
            raise ValueError("`stds` must be positive.")
        if weights is None:
            w = torch.ones(k, dtype=torch.float64)
        else:
            w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.shape != (k,) or (w <= 0).any():
            raise ValueError(f"`weights` must be {k} positive numbers.")
        self.weights = w / w.sum()
        self.dim = d
        self.shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.shape) != d:
            raise ValueError(f"`shape` {self.shape} does not hold {d} dimensions.")

    # ------------------------------------------------------------------ exact quantities
    def _stats(self, xbar: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
        flat = xbar.reshape(xbar.shape[0], -1)
        mu = self.means.to(flat)
        var = (self.stds.to(flat) ** 2 + sigma**2)  # (K,)
        diff = flat[:, None, :] - mu[None]  # (B, K, D)
        sq = (diff * diff).sum(-1)  # (B, K)
        logits = torch.log(self.weights.to(flat)) - 0.5 * self.dim * torch.log(var) - 0.5 * sq / var
        return diff, var, logits

    def eps(self, x: Tensor, sigma: float, alpha: float = 1.0) -> Tensor:
        """Exact ``eps`` at state ``x`` (``xbar = x / alpha``) and noise level ``sigma``.

        At ``sigma = inf`` (zero terminal SNR, ``alpha = 0``) the state is pure noise, ``x = eps``."""
        if math.isinf(sigma):
            return x.clone()
        xbar = x / alpha if alpha != 1.0 else x
        diff, var, logits = self._stats(xbar, sigma)
        r = torch.softmax(logits, dim=-1)  # (B, K)
        out = sigma * torch.einsum("bk,bkd->bd", r / var, diff)
        return out.reshape(x.shape)

    def log_prob(self, xbar: Tensor, sigma: float = 0.0) -> Tensor:
        """``log p_sigma(xbar)`` of the noised data in ``xbar`` coordinates, one value per sample.
        (The density of ``x = alpha * xbar`` is this minus ``D log alpha``.)"""
        _, _, logits = self._stats(xbar, sigma)
        return torch.logsumexp(logits, dim=-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def denoise(self, xbar: Tensor, sigma: float) -> Tensor:
        """Exact posterior mean ``E[x0 | xbar]``."""
        return xbar - sigma * self.eps(xbar, sigma)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` data samples, shape ``(n, *shape)``."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[idx] + self.stds[idx, None] * z
        return x.reshape(n, *self.shape).to(dtype)

    def model(self, schedule: Schedule, prediction: str = "eps", **kwargs) -> AnalyticModel:  # type: ignore[no-untyped-def]
        """The exact model on ``schedule`` (its network returns the exact ``prediction``)."""
        mean = (self.weights @ self.means).reshape(self.shape)
        return AnalyticModel(lambda x, s: self.eps(x, s, float(schedule.alpha_from_sigma(s))), schedule,
                             prediction, data_mean=mean, **kwargs)


class Gaussian(GaussianMixture):
    """One Gaussian ``N(mean, diag(std^2))`` (per-dimension ``std``) with the closed-form flow map."""

    def __init__(self, mean: Union[Tensor, Sequence], std: Union[float, Tensor, Sequence],
                 shape: Optional[tuple[int, ...]] = None) -> None:
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float64)).flatten()
        std_t = torch.as_tensor(np.broadcast_to(np.asarray(std, dtype=np.float64), mean_t.shape).copy())
        if (std_t <= 0).any():
            raise ValueError("`std` must be positive.")
        super().__init__(mean_t[None], 1.0, shape=shape)
        self.mean, self.std = mean_t, std_t

    def eps(self, x: Tensor, sigma: float, alpha: float = 1.0) -> Tensor:
        if math.isinf(sigma):
            return x.clone()
        xbar = (x / alpha if alpha != 1.0 else x).reshape(x.shape[0], -1)
        out = sigma * (xbar - self.mean.to(xbar)) / (self.std.to(xbar) ** 2 + sigma**2)
        return out.reshape(x.shape)

    def log_prob(self, xbar: Tensor, sigma: float = 0.0) -> Tensor:
        flat = xbar.reshape(xbar.shape[0], -1)
        var = self.std.to(flat) ** 2 + sigma**2
        return (-0.5 * ((flat - self.mean.to(flat)) ** 2 / var + torch.log(2 * math.pi * var))).sum(-1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float64) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.mean + self.std * z).reshape(n, *self.shape).to(dtype)

    def flow(self, x: Tensor, sigma_from: float, sigma_to: float, schedule: Schedule) -> Tensor:
        """Exact probability-flow map of the state ``x`` (model coordinates) from ``sigma_from`` to
        ``sigma_to`` on ``schedule`` (either direction; either end may be 0)."""
        a0 = float(schedule.alpha_from_sigma(sigma_from))
        a1 = float(schedule.alpha_from_sigma(sigma_to))
        flat = (x / a0).reshape(x.shape[0], -1)
        mu, s2 = self.mean.to(flat), self.std.to(flat) ** 2
        scale = torch.sqrt((s2 + sigma_to**2) / (s2 + sigma_from**2))
        return ((mu + (flat - mu) * scale) * a1).reshape(x.shape)


# ------------------------------------------------------------------------------ test problems
def gmm_ring(k: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """``k`` equal components on a circle of ``radius`` in 2-D."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return GaussianMixture(torch.stack([radius * torch.cos(ang), radius * torch.sin(ang)], 1), std)


def gmm_grid(n: int = 3, spacing: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """``n x n`` equal components on a centred square grid in 2-D."""
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
    gx, gy = torch.meshgrid(c, c, indexing="ij")
    return GaussianMixture(torch.stack([gx.flatten(), gy.flatten()], 1), std)


def gmm_random(dim: int = 64, k: int = 8, std: float = 0.3, scale: float = 1.0, seed: int = 0,
               shape: Optional[tuple[int, ...]] = None) -> GaussianMixture:
    """``k`` components with means drawn from ``N(0, scale^2 I)`` in ``dim`` dimensions (fixed seed)
    and random weights."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64) * scale
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, std, w, shape=shape)


# ------------------------------------------------------------------------------ reference solves
@torch.no_grad()
def reference_solve(model: EpsilonModel, x: Tensor, sigma_from: float, sigma_to: float, *,
                    rtol: float = 1e-10, atol: float = 1e-10, method: str = "DOP853") -> Tensor:
    """Solve the probability-flow ODE ``d xbar / d sigma = eps`` tightly with scipy in float64.

    The batch is one system (samples do not interact, so per-sample accuracy is what the
    tolerances bound). For a network model (not :class:`AnalyticModel`) a solve that ends at
    ``sigma = 0`` stops at the schedule's ``sigma_min`` and returns the denoised estimate there,
    because the network is not defined below ``sigma_min``; solvers end the same way.

    Args:
        model: the model (its NFE counter advances by the number of scipy evaluations).
        x: state at ``sigma_from`` (model coordinates).
        sigma_from, sigma_to: the two ends; either direction.
        rtol, atol: scipy tolerances (on ``xbar``).
        method: a ``scipy.integrate.solve_ivp`` method.

    Returns:
        The state at ``sigma_to`` in model coordinates, with ``x``'s dtype and device.
    """
    from scipy.integrate import solve_ivp

    sched = model.schedule
    for key, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"`{key}` must be a finite number > 0 (e.g. 1e-10), got {tol!r}.")
    s0, s1 = float(sigma_from), float(sigma_to)
    for key, v in (("sigma_from", s0), ("sigma_to", s1)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"`{key}` must be a finite noise level >= 0, got {v!r}; start a zero-terminal-SNR "
                             "solve below sigma = inf.")
        if not isinstance(model, AnalyticModel) and v != 0.0 and not (
                sched.sigma_min * (1 - 1e-9) <= v <= sched.sigma_max * (1 + 1e-9)):
            raise ValueError(
                f"`{key}` = {v!r} is outside the schedule's noise range [{sched.sigma_min!r}, {sched.sigma_max!r}], "
                "where the network was never trained. Use a level inside it (an exact AnalyticModel takes any level)."
            )
    final_denoise = False
    if not isinstance(model, AnalyticModel):
        if s1 == 0.0:
            s1, final_denoise = sched.sigma_min, True
        if s0 == 0.0:
            raise ValueError("reference_solve cannot start a network model at sigma = 0; start at sigma_min.")
    shape, dtype, device = x.shape, x.dtype, x.device
    work_dtype = torch.float64 if isinstance(model, AnalyticModel) else dtype
    a0 = float(sched.alpha_from_sigma(s0))
    y0 = (x.detach().to("cpu", torch.float64) / a0).flatten().numpy()

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        alpha = float(sched.alpha_from_sigma(s))
        xs = torch.from_numpy(y).view(shape) * alpha
        eps = model.predict(xs.to(device=device, dtype=work_dtype), s).eps
        return eps.detach().to("cpu", torch.float64).flatten().numpy()

    if s0 == s1:
        out = torch.from_numpy(y0.copy()).view(shape) * a0
    else:
        res = solve_ivp(rhs, (s0, s1), y0, method=method, rtol=rtol, atol=atol)
        if not res.success:
            raise RuntimeError(f"reference_solve failed: {res.message}")
        out = torch.from_numpy(res.y[:, -1].copy()).view(shape) * float(sched.alpha_from_sigma(s1))
    out = out.to(device=device, dtype=dtype)
    if final_denoise:
        out = model.predict(out, s1).x0
    return out
