"""The density chasm (FDRL Fig. 2b and 4): FDRL crosses it, a stale estimator does not."""

from experiments import density_chasm

STEPS = 500  # enough for FDRL to settle on p (about 100 steps to cross), small enough for CI


def test_fdrl_crosses_the_chasm_and_the_stale_estimator_does_not():
  fdrl = density_chasm.run_fdrl(STEPS, seed=0, num_samples=1000, record_every=0)
  stale = density_chasm.run_stale(STEPS, seed=0, num_samples=1000)
  assert density_chasm.mean_error(fdrl.samples) < 0.3
  assert density_chasm.mean_error(stale.samples) > 1.0
