"""Bregman density-ratio losses of FDRL (Eq. 11, 18–21) on raw network outputs.

For a convex g, the Bregman divergence between the true ratio r* = q/p and an estimate r, with the
r*-only term dropped, is (Eq. 11)

    L(r) = E_p[g'(r) r − g(r)] − E_q[g'(r)],

minimised by r = q/p. p is the data, q the flowed samples. Each loss below is the pair of its
per-sample terms, so the training loop can log them separately:

    data term    t_p(out) = g'(r) r − g(r)     averaged over the data batch,
    flowed term  t_q(out) = −g'(r)             averaged over the flowed batch.

Terms are written in the network's own output (r, or l = log r) so that they stay finite for large
|outputs|: LR uses softplus (Eq. 21), KL (unnormalised KL / KLIEP, g(y) = y log y − y) uses e^l − l.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fdrl_jax import registry
from fdrl_jax.divergences import check_output

Array = jax.Array


class BregmanLoss(NamedTuple):
  """A Bregman density-ratio loss as its two per-sample terms and the output it expects.

  ``loss(out_data, out_flowed)`` returns the scalar L = mean t_p(out_data) + mean t_q(out_flowed).
  """

  data_term: Callable[[Array], Array]
  flowed_term: Callable[[Array], Array]
  output: str  # "ratio" or "log_ratio": what the network must output.

  def __call__(self, out_data: Array, out_flowed: Array) -> Array:
    return jnp.mean(self.data_term(out_data)) + jnp.mean(self.flowed_term(out_flowed))


LOSSES: dict[str, BregmanLoss] = {
  # LSIF, g(y) = ½(y − 1)²: L = ½E_p[r²] − E_q[r] (Eq. 18, constant dropped).
  "lsif": BregmanLoss(
    data_term=lambda r: 0.5 * jnp.square(r), flowed_term=lambda r: -r, output="ratio"
  ),
  # Logistic regression, g(y) = y log y − (1 + y) log(1 + y):
  # L = −E_p[log σ(−l)] − E_q[log σ(l)] (Eq. 21); q is the positive class.
  "lr": BregmanLoss(
    data_term=jax.nn.softplus, flowed_term=lambda l: jax.nn.softplus(-l), output="log_ratio"
  ),
  # Unnormalised KL, g(y) = y log y − y: L = E_p[e^l] − E_q[l].
  "kl": BregmanLoss(data_term=jnp.exp, flowed_term=lambda l: -l, output="log_ratio"),
}


def get_loss(name: str, setting: str = "--config.loss.name") -> BregmanLoss:
  """Looks up ``name`` in LOSSES; an unknown name raises a one-line ValueError naming ``setting``
  and listing the valid ones."""
  return registry.lookup(LOSSES, name, setting)


def bregman_loss(
  g: Callable[[Array], Array],
  g_prime: Callable[[Array], Array] | None = None,
  *,
  output: str = "ratio",
) -> BregmanLoss:
  """Builds the Bregman loss of Eq. (11) for any convex, elementwise g.

  Args:
    g: the convex generator g(y), applied elementwise to ratios y > 0 (or any y, where defined).
    g_prime: its derivative; by default the elementwise ``jax.grad`` of g.
    output: "ratio" if the network outputs r, "log_ratio" if it outputs l = log r (then r = e^l;
      write a dedicated stable loss, as LOSSES does, when e^l could overflow).

  Returns:
    A BregmanLoss usable wherever the built-in ones are.
  """
  check_output(output)
  if g_prime is None:
    g_prime = jax.grad(lambda y: jnp.sum(g(y)))
  to_ratio = jnp.exp if output == "log_ratio" else (lambda r: r)

  def data_term(out):
    r = to_ratio(out)
    return g_prime(r) * r - g(r)

  def flowed_term(out):
    return -g_prime(to_ratio(out))

  return BregmanLoss(data_term=data_term, flowed_term=flowed_term, output=output)
