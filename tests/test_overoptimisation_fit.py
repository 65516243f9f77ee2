"""The Gao et al. (2022) over-optimisation fits of experiments/overoptimisation/fit.py."""
import importlib.util
import math
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).parents[1] / 'experiments' / 'overoptimisation' / 'fit.py'
_spec = importlib.util.spec_from_file_location('overoptimisation_fit', _PATH)
fit_lib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit_lib)


@pytest.mark.parametrize('form', fit_lib.FORMS)
def test_fit_recovers_the_parameters_of_exact_curves(form):
  d = np.array([0.0, 0.3, 0.8, 1.5, 2.2, 3.0, 4.1])
  truth = fit_lib.Fit(form, alpha=0.4, beta=0.15)
  fitted = fit_lib.fit(form, d, truth(d))
  assert fitted.alpha == pytest.approx(0.4, abs=1e-9)
  assert fitted.beta == pytest.approx(0.15, abs=1e-9)


def test_peaks_are_where_the_curves_turn():
  bon, rl = fit_lib.Fit('bon', 0.4, 0.1), fit_lib.Fit('rl', 0.4, 0.2)
  assert bon.peak == pytest.approx(2.0)
  assert rl.peak == pytest.approx(math.exp(1.0))
  for curve in (bon, rl):
    d = np.linspace(0.01, 10, 20001)
    assert d[np.argmax(curve(d))] == pytest.approx(curve.peak, abs=1e-3)
  assert fit_lib.Fit('bon', 0.4, -0.1).peak is None


def test_fit_rejects_too_few_points_and_unknown_forms():
  with pytest.raises(ValueError, match='two points'):
    fit_lib.fit('bon', [0.0, 1.0], [0.0, 0.2])
  with pytest.raises(ValueError, match='form'):
    fit_lib.fit('power', [0.5, 1.0], [0.1, 0.2])
