"""FDRL training (Algorithm 1) and sampling (Algorithm 2) as pure, jitted, data-parallel functions.

One training step τ, all inside one jitted function of (state, data batch, key):

    x_p  = data + σ ε (dequantisation) [+ random horizontal flip]
    x_0 ~ q' (the prior)
    x_K  = flow(x_0; f'(r_θτ)) — the current parameters, no gradient through the flow
    θ   ← Adam(∇θ L(θ; x_p, x_K)),  L the Bregman loss (Eq. 11);  θ' ← m θ' + (1 − m) θ

The step's randomness is ``fold_in(key, state.step)``, so a resumed run replays exactly. Over several
devices the batch (and the particles) are sharded over a "data" mesh axis and the parameters
replicated; XLA averages the gradient. Only the ``build_*`` / ``create_*`` functions read a config.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fdrl_jax import priors
from fdrl_jax.divergences import flow_potential
from fdrl_jax.flows import two_stage_flow, flow
from fdrl_jax.losses import BregmanLoss, get_loss

Array = jax.Array
Metrics = dict[str, Array]


def variables(params, batch_stats) -> dict:
  """Flax variables from trainable parameters and (possibly empty) spectral-norm statistics."""
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


@struct.dataclass
class TrainState:
  """Everything a run needs to resume: saved whole by the checkpoints.

  ``batch_stats`` holds mutable collections (the spectral-norm power-iteration state), updated by
  the training step and, like the parameters, averaged into the EMA copy used for sampling.
  """
  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any
  prior: Any  # a fdrl_jax.priors prior, fitted once and stored with the run

  def ema_variables(self) -> dict:
    return variables(self.ema_params, self.ema_batch_stats)


class FlowSpec(struct.PyTreeNode):
  """The flow's static hyper-parameters (K, κ, η, ν, clipping)."""
  num_steps: int = struct.field(pytree_node=False)
  num_refine_steps: int = struct.field(pytree_node=False)
  step_size: float = struct.field(pytree_node=False)
  noise_scale: float = struct.field(pytree_node=False)
  clip: tuple[float, float] | None = struct.field(pytree_node=False)


# ----------------------------------------------------------------------------------------------
# Builders: the only functions here that read a config.

def build_flow_spec(config: ml_collections.ConfigDict) -> FlowSpec:
  f = config.flow
  return FlowSpec(num_steps=f.num_steps, num_refine_steps=f.num_refine_steps,
                  step_size=f.step_size, noise_scale=f.noise_scale,
                  clip=priors.DATA_RANGE if f.clip else None)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the paper's piecewise-constant decay (× 0.1 at each of ``optim.decay_steps``)."""
  o = config.optim
  schedule = optax.piecewise_constant_schedule(o.learning_rate,
                                               {int(s): 0.1 for s in o.decay_steps})
  return optax.adam(schedule, b1=o.b1, b2=o.b2)


def build_potential(config: ml_collections.ConfigDict) -> tuple[BregmanLoss, Callable]:
  """The Bregman loss and the matching stable flow potential f'(output)."""
  loss = get_loss(config.loss.name)
  return loss, flow_potential(config.loss.divergence, loss.output)


def _gaussian_prior(p, data, event_shape):
  if data is None:  # restore template: same shapes, no fit
    d = int(np.prod(event_shape))
    return priors.GaussianPrior(mean=jnp.zeros((d,)), scale_tril=jnp.eye(d),
                                event_shape=event_shape)
  return priors.fit_gaussian(data, jitter=p.jitter)


def _low_rank_prior(p, data, event_shape):
  if data is None:
    d = int(np.prod(event_shape))
    return priors.LowRankGaussianPrior(mean=jnp.zeros((d,)), components=jnp.zeros((d, p.rank)),
                                       residual_scale=jnp.zeros(()), event_shape=event_shape)
  return priors.fit_low_rank_gaussian(data, p.rank, jitter=p.jitter)


# name → (prior config group, data or None, event shape) → prior. "data" is what the prior is
# fitted to (the training images) or, for "empirical", the source domain it draws from.
PRIORS: dict[str, Callable] = {
    "gaussian": _gaussian_prior,
    "low_rank": _low_rank_prior,
    "uniform": lambda p, data, event_shape: priors.UniformPrior(event_shape=event_shape),
    "normal": lambda p, data, event_shape: priors.NormalPrior(event_shape=event_shape, loc=p.loc,
                                                              scale=p.scale),
    "empirical": lambda p, data, event_shape: priors.EmpiricalPrior(data=jnp.asarray(data)),
}


def build_prior(config: ml_collections.ConfigDict, data: np.ndarray | None,
                event_shape: tuple[int, ...]):
  """The prior q' named by ``config.prior.name`` (a key of PRIORS), fitted to ``data``; ``data``
  None gives a same-shaped template, to restore a checkpoint without refitting."""
  if config.prior.name not in PRIORS:
    raise ValueError(f"Unknown prior {config.prior.name!r}. Available priors are: "
                     f"{', '.join(sorted(PRIORS))}.")
  return PRIORS[config.prior.name](config.prior, data, event_shape)


# ----------------------------------------------------------------------------------------------
# Pure functions.

def create_train_state(model: nn.Module, tx: optax.GradientTransformation, prior, key: Array,
                       event_shape: tuple[int, ...]) -> TrainState:
  @jax.jit  # one compilation instead of one per initialiser op
  def init(key):
    init_vars = model.init(key, jnp.zeros((1, *event_shape)))
    params, batch_stats = init_vars["params"], init_vars.get("batch_stats", {})
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # donated buffers must not alias
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), ema_params=copy(params),
                      ema_batch_stats=copy(batch_stats), prior=None)

  return init(key).replace(prior=prior)


def estimator_potential(apply_fn: Callable, potential: Callable, model_vars
                        ) -> Callable[[Array], Array]:
  """x ↦ f'(r_θ(x)) per particle, for ``flow`` (spectral-norm statistics frozen)."""
  return lambda x: potential(apply_fn(model_vars, x))


def make_train_step(
    apply_fn: Callable, tx: optax.GradientTransformation, loss: BregmanLoss, potential: Callable,
    flow_spec: FlowSpec, *, dequantization: float, random_flip: bool, ema_decay: float,
    particle_sharding: NamedSharding | None = None,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, Metrics]]:
  """Algorithm 1 as a pure function ``step(state, batch, key) -> (state, metrics)``.

  Args:
    apply_fn: the estimator's ``apply(variables, x, update_stats=False) -> (B,)`` outputs (r or
      log r, per ``loss``), e.g. a Flax module's ``apply``.
    tx: the optimizer.
    loss: Bregman loss on (outputs on data, outputs on flowed samples).
    potential: stable f'(output) of the flow's divergence.
    flow_spec: K, η, ν and clipping of the training flow.
    dequantization: σ of the Gaussian noise added to the data.
    random_flip: flip image data horizontally with probability ½.
    ema_decay: m of the EMA copy.
    particle_sharding: sharding of the prior particles (the data sharding), when data-parallel.
  """
  def step(state: TrainState, batch: Array, key: Array) -> tuple[TrainState, Metrics]:
    k_deq, k_flip, k_prior, k_flow = jax.random.split(jax.random.fold_in(key, state.step), 4)
    x_p = batch + dequantization * jax.random.normal(k_deq, batch.shape, batch.dtype)
    if random_flip:
      flip = jax.random.bernoulli(k_flip, 0.5, (batch.shape[0],) + (1,) * (batch.ndim - 1))
      x_p = jnp.where(flip, x_p[:, :, ::-1], x_p)
    x_0 = state.prior.sample(k_prior, batch.shape[0])
    if particle_sharding is not None:
      x_0 = jax.lax.with_sharding_constraint(x_0, particle_sharding)
    current = variables(state.params, state.batch_stats)
    x_k = flow(estimator_potential(apply_fn, potential, current), x_0, k_flow,
               num_steps=flow_spec.num_steps, step_size=flow_spec.step_size,
               noise_scale=flow_spec.noise_scale, clip=flow_spec.clip)
    x_k = jax.lax.stop_gradient(x_k)

    def objective(params):
      # One power iteration of spectral norm per training step, on the data pass.
      out_p, mutated = apply_fn(variables(params, state.batch_stats), x_p, update_stats=True,
                                mutable=["batch_stats"])
      batch_stats = mutated.get("batch_stats", state.batch_stats)
      out_q = apply_fn(variables(params, batch_stats), x_k)
      data_term, flowed_term = jnp.mean(loss.data_term(out_p)), jnp.mean(loss.flowed_term(out_q))
      return data_term + flowed_term, (data_term, flowed_term, out_p, out_q, batch_stats)

    (value, (data_term, flowed_term, out_p, out_q, batch_stats)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = lambda new, old: optax.incremental_update(new, old, 1.0 - ema_decay)
    to_ratio = (lambda o: jnp.exp(jnp.clip(o, -80.0, 80.0))) if loss.output == "log_ratio" else (
        lambda o: o)
    metrics = {"loss": value, "data_term": data_term, "flowed_term": flowed_term,
               "ratio_data": jnp.mean(to_ratio(out_p)), "ratio_flowed": jnp.mean(to_ratio(out_q)),
               "grad_norm": optax.tree.norm(grads)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, ema_params=ema(params, state.ema_params),
                              ema_batch_stats=ema(batch_stats, state.ema_batch_stats))
    return new_state, metrics

  return step


def make_sampler(apply_fn: Callable, potential: Callable, flow_spec: FlowSpec
                 ) -> Callable[[Any, Any, Array, int], Array]:
  """Algorithm 2: ``sample(variables, prior, key, n)`` draws x_0 ~ q' and flows K + κ steps.

  Jitted with ``n`` static; variables and prior are arguments, so one compilation serves them all.
  """
  def sample(model_vars, prior, key: Array, n: int) -> Array:
    k_prior, k_flow = jax.random.split(key)
    return two_stage_flow(estimator_potential(apply_fn, potential, model_vars),
                          prior.sample(k_prior, n), k_flow, num_steps=flow_spec.num_steps,
                          num_refine_steps=flow_spec.num_refine_steps,
                          step_size=flow_spec.step_size, noise_scale=flow_spec.noise_scale,
                          clip=flow_spec.clip)
  return jax.jit(sample, static_argnums=3)


# ----------------------------------------------------------------------------------------------
# Devices.

def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "data" over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def jit_train_step(step_fn_builder: Callable[[NamedSharding | None], Callable], mesh: Mesh):
  """Jits ``step_fn_builder(data_sharding)`` with the batch sharded over "data", the state
  replicated, and the state donated."""
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return jax.jit(step_fn_builder(sharded), in_shardings=(replicated, sharded, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def global_batch(batch: np.ndarray, mesh: Mesh) -> Array:
  """Places a global host batch (the same on every process) on the mesh, split over "data".

  Each process contributes only its own rows, so multi-host runs load no row twice on a device.
  """
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if batch.shape[0] % n_dev:
    raise ValueError(f"The batch size ({batch.shape[0]}) must be divisible by the number of "
                     f"devices ({n_dev}); set --config.data.batch_size.")
  rows = batch.shape[0] // n_proc
  local = batch[jax.process_index() * rows:(jax.process_index() + 1) * rows]
  return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local,
                                                batch.shape)
