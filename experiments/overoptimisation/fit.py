"""The functional forms of Gao et al. (2022) for reward-model over-optimisation, fitted.

With d = sqrt(KL(pi || pi_init)) and R the gain in reward over the initial policy:
  best-of-n:  R_bon(d) = d (alpha - beta d)
  RL:         R_RL(d)  = d (alpha - beta ln d)
Both are linear in (alpha, beta) once d is given, so each fit is an ordinary least-squares
solve without intercept (R(0) = 0 by construction). For the gold reward, beta > 0 makes a peak:
d* = alpha / (2 beta) for best-of-n and d* = exp(alpha / beta - 1) for RL.
"""
import dataclasses
import math

import numpy as np

FORMS = ('bon', 'rl')


@dataclasses.dataclass(frozen=True)
class Fit:
  """One fitted curve: R(d) = d (alpha - beta g(d)), g(d) = d (bon) or ln d (rl)."""
  form: str
  alpha: float
  beta: float

  def __call__(self, d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, float)
    return d * (self.alpha - self.beta * _g(self.form, d))

  @property
  def peak(self) -> float | None:
    """d at the curve's maximum; None when beta <= 0 (no peak: R keeps rising)."""
    if self.beta <= 0:
      return None
    return self.alpha / (2 * self.beta) if self.form == 'bon' else math.exp(
        self.alpha / self.beta - 1)


def _g(form: str, d: np.ndarray) -> np.ndarray:
  if form == 'bon':
    return d
  # d ln d -> 0 as d -> 0, so a point at d = 0 contributes nothing, as R(0) = 0 requires.
  return np.log(np.where(d > 0, d, 1.0))


def fit(form: str, d, reward_gain) -> Fit:
  """Least-squares (alpha, beta) of `form` through points (d [N], reward_gain [N])."""
  if form not in FORMS:
    raise ValueError(f'form {form!r}: use one of {FORMS}')
  d, r = np.asarray(d, float), np.asarray(reward_gain, float)
  if d.shape != r.shape or d.ndim != 1 or np.count_nonzero(d) < 2:
    raise ValueError(f'need matching 1-D d and reward_gain with two points at d > 0, got '
                     f'{d.shape} and {r.shape}')
  design = np.stack([d, -d * _g(form, d)], axis=1)  # [N, 2]
  (alpha, beta), *_ = np.linalg.lstsq(design, r, rcond=None)
  return Fit(form, float(alpha), float(beta))
