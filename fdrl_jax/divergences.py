"""f-divergences of FDRL (Table 1) and the flow potential f'(r) written stably from a network output.

Convention used throughout the package: r(x) = q(x)/p(x), q = the flowed/prior samples, p = the
data. The FDRL flow moves particles down f'(r_θ(x)) (Eq. 9); f' is increasing because f is convex.

A density-ratio network outputs either the ratio r itself (``"ratio"``, trained with LSIF) or the
log-ratio l = log r (``"log_ratio"``, trained with LR or KL). The potential must be computed from
that output without overflow: from l, Eq. (22)–(24) use ``log_sigmoid``; from r only Pearson χ²
(2r − 2) is safe, since r may be ≤ 0 for an LSIF network and the log-based f' are then undefined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fdrl_jax import registry

Array = jax.Array

OUTPUTS = ("ratio", "log_ratio")  # what a density-ratio network outputs: r, or l = log r

_LOG2 = 0.6931471805599453


class Divergence(NamedTuple):
  """An f-divergence D_f(p‖q) = E_p[f(q/p)] and its flow potentials.

  Attributes:
    f: the convex generator f(r), elementwise.
    f_prime: its derivative f'(r), elementwise (the naive formula of Table 1).
    potentials: network-output parameterisation ("ratio" or "log_ratio") → stable f' as a
      function of that output. A missing key means the pairing cannot be computed safely.
  """

  f: Callable[[Array], Array]
  f_prime: Callable[[Array], Array]
  potentials: Mapping[str, Callable[[Array], Array]]


DIVERGENCES: dict[str, Divergence] = {
  "pearson": Divergence(
    f=lambda r: (r - 1.0) ** 2,
    f_prime=lambda r: 2.0 * (r - 1.0),
    potentials={
      "ratio": lambda r: 2.0 * r - 2.0,
      # exp overflows float32 only past l ≈ 88, where χ² itself is infinite.
      "log_ratio": lambda l: 2.0 * jnp.exp(l) - 2.0,
    },
  ),
  "kl": Divergence(
    f=lambda r: r * jnp.log(r),
    f_prime=lambda r: jnp.log(r) + 1.0,
    potentials={"log_ratio": lambda l: l + 1.0},
  ),  # Eq. (22)
  "js": Divergence(
    f=lambda r: r * jnp.log(r) - (r + 1.0) * jnp.log((r + 1.0) / 2.0),
    f_prime=lambda r: jnp.log(2.0 * r / (r + 1.0)),
    potentials={"log_ratio": lambda l: _LOG2 + jax.nn.log_sigmoid(l)},
  ),  # Eq. (23)
  "logd": Divergence(
    f=lambda r: (r + 1.0) * jnp.log(r + 1.0) - 2.0 * _LOG2,
    f_prime=lambda r: jnp.log(r + 1.0) + 1.0,
    potentials={"log_ratio": lambda l: 1.0 - jax.nn.log_sigmoid(-l)},
  ),  # Eq. (24)
}


def get_divergence(name: str, setting: str = "--config.loss.divergence") -> Divergence:
  """Looks up ``name`` in DIVERGENCES; an unknown name raises a one-line ValueError naming
  ``setting`` and listing the valid ones."""
  return registry.lookup(DIVERGENCES, name, setting)


def check_output(output: str) -> str:
  """Returns ``output`` if it is a network output of ``OUTPUTS``; else raises a one-line
  ValueError listing them. The one check of an output name, for potentials and losses alike."""
  if output not in OUTPUTS:
    raise registry.unknown_name(output, OUTPUTS, "network output")
  return output


def flow_potential(name: str, output: str) -> Callable[[Array], Array]:
  """The stable f'(r) of divergence ``name`` as a function of a network's ``output``.

  Args:
    name: a key of DIVERGENCES.
    output: "ratio" (the network outputs r) or "log_ratio" (it outputs log r).

  Raises:
    ValueError: for an unknown name or output, or a pairing that cannot be computed stably; the
      message lists the valid pairings.
  """
  check_output(output)
  potentials = get_divergence(name).potentials
  if output not in potentials:
    valid = ", ".join(f"{d}+{o}" for d, div in sorted(DIVERGENCES.items()) for o in div.potentials)
    raise ValueError(
      f"Divergence {name!r} cannot be computed stably from a {output!r} output. Valid "
      f"divergence+output pairings: {valid} (use a log-ratio loss such as 'lr' or 'kl')."
    )
  return potentials[output]
