"""The FDRL method: training (Algorithm 1) as a pure step, and what its samplers are made of.

One training step τ, all inside one jitted function of (state, data batch, key):

    x_p  = data + σ ε (dequantisation) [+ random horizontal flip]
    x_0 ~ q' (the prior)
    x_K  = flow(x_0; f'(r_θτ)) — the current parameters, no gradient through the flow
    θ   ← Adam(∇θ L(θ; x_p, x_K)),  L the Bregman loss (Eq. 11);  θ' ← m θ' + (1 − m) θ

With the empirical prior (translation, Sec. 6.5) the source draws x_0 get the data's dequantisation
and flips too, as in the reference. The step's randomness is ``fold_in(key, state.step)``, so a
resumed run replays exactly. Over several devices the batch (and the particles) are sharded over a
"data" mesh axis and the parameters replicated; XLA averages the gradient (``fdrl_jax.parallel``).
Sampling (Algorithm 2 and the rest) is ``fdrl_jax.sampling`` composing ``sampler_parts``. Only the
``build_*`` functions and the method hooks (``init_state``, ``build_train_step``,
``sampler_parts``) read a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from jax.sharding import NamedSharding

from fdrl_jax import bundled, datasets, models, optim, prior_fit, sampler
from fdrl_jax.divergences import flow_potential
from fdrl_jax.flows import FlowSpec, build_flow_spec, flow
from fdrl_jax.losses import BregmanLoss, get_loss
from fdrl_jax.models import training_apply, variables

Array = jax.Array
Metrics = dict[str, Array]


class TrainState(struct.PyTreeNode):
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


# ----------------------------------------------------------------------------------------------
# Builders: the only functions here that read a config.


def create_estimator(config: ml_collections.ConfigDict) -> nn.Module:
  """The ratio estimator of ``config.model``, started at the neutral ratio r = 1.

  A log-ratio output (the LR losses) is ≈ 0 at initialisation, i.e. r ≈ 1 already. A ratio output
  (LSIF) would start at r ≈ 0: then f'(r) is far from its value at r = 1, the first flows move the
  particles by the initialisation rather than by a learnt ratio: on the bundled digits LSIF-χ²
  ended worse than its own prior after 1 500 steps, and the reference PyTorch code fails the same
  way unless trained three times longer (experiments/README.md, "LSIF's start"). So the output
  layer's bias starts at 1 for a ratio output; ``model.neutral_init=False`` restores the
  reference's zero bias.
  """
  loss = get_loss(config.loss.name)
  neutral = config.model.neutral_init and loss.output == "ratio"
  return models.create_model(config.model, output_bias=1.0 if neutral else 0.0)


def build_potential(config: ml_collections.ConfigDict) -> tuple[BregmanLoss, Callable]:
  """The Bregman loss and the matching stable flow potential f'(output)."""
  loss = get_loss(config.loss.name)
  return loss, flow_potential(config.loss.divergence, loss.output)


# ----------------------------------------------------------------------------------------------
# Pure functions.


def create_train_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  prior,
  key: Array,
  event_shape: tuple[int, ...],
) -> TrainState:
  @jax.jit  # one compilation instead of one per initialiser op
  def init(key):
    init_vars = model.init(key, jnp.zeros((1, *event_shape)))
    params, batch_stats = init_vars["params"], init_vars.get("batch_stats", {})
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # donated buffers must not alias
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=copy(params),
      ema_batch_stats=copy(batch_stats),
      prior=None,
    )

  return init(key).replace(prior=prior)


def estimator_potential(
  apply_fn: Callable, potential: Callable, model_vars
) -> Callable[[Array], Array]:
  """x ↦ f'(r_θ(x)) per particle, for ``flow`` (spectral-norm statistics frozen)."""
  return lambda x: potential(apply_fn(model_vars, x))


def make_train_step(
  apply_fn: Callable,
  tx: optax.GradientTransformation,
  loss: BregmanLoss,
  potential: Callable,
  flow_spec: FlowSpec,
  *,
  dequantization: float,
  random_flip: bool,
  ema_decay: float,
  augment_prior: bool = False,
  particle_sharding: NamedSharding | None = None,
  sn_every_call: bool = True,
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
    augment_prior: dequantise (and flip) the prior draws as the data: for a prior that is a
      source image domain (translation).
    particle_sharding: sharding of the prior particles (the data sharding), when data-parallel.
    sn_every_call: the reference's spectral norm: one power iteration in *every* forward pass of
      the step, K + 2 (flow step k sees the estimate after k + 1, then the flowed pass, then the
      data pass). False: one per step, on the data pass (the flow uses the step's start state),
      which trained worse estimators (experiments/README.md).
  """

  def augment(x: Array, k_deq: Array, k_flip: Array) -> Array:
    x = x + dequantization * jax.random.normal(k_deq, x.shape, x.dtype)
    if random_flip:
      flip = jax.random.bernoulli(k_flip, 0.5, (x.shape[0],) + (1,) * (x.ndim - 1))
      x = jnp.where(flip, x[:, :, ::-1], x)
    return x

  def step(state: TrainState, batch: Array, key: Array) -> tuple[TrainState, Metrics]:
    k_deq, k_flip, k_prior, k_flow = jax.random.split(jax.random.fold_in(key, state.step), 4)
    x_p = augment(batch, k_deq, k_flip)
    x_0 = state.prior.sample(k_prior, batch.shape[0])
    if augment_prior:
      x_0 = augment(x_0, *jax.random.split(jax.random.fold_in(k_prior, 1)))
    if particle_sharding is not None:
      x_0 = jax.lax.with_sharding_constraint(x_0, particle_sharding)
    clip = flow_spec.training_clip()
    updating_pass = lambda params, stats, x: training_apply(
      apply_fn, params, stats, x, update_stats=True
    )
    per_call = sn_every_call and bool(state.batch_stats)
    if per_call:

      def stateful_potential(x, stats):
        out, stats = updating_pass(state.params, stats, x)
        return potential(out), stats

      # (the ignore: flow's PotentialFn annotation names only the stateless form x -> values)
      x_k, flow_stats = flow(
        stateful_potential,
        x_0,
        k_flow,  # type: ignore[arg-type]
        num_steps=flow_spec.num_steps,
        step_size=flow_spec.step_size,
        noise_scale=flow_spec.noise_scale,
        clip=clip,
        state=state.batch_stats,
      )
    else:
      current = variables(state.params, state.batch_stats)
      x_k = flow(
        estimator_potential(apply_fn, potential, current),
        x_0,
        k_flow,
        num_steps=flow_spec.num_steps,
        step_size=flow_spec.step_size,
        noise_scale=flow_spec.noise_scale,
        clip=clip,
      )
    x_k = jax.lax.stop_gradient(x_k)

    def objective(params):
      if per_call:  # the reference's order: flowed pass, then data pass, each one iteration
        out_q, batch_stats = updating_pass(params, flow_stats, x_k)
        out_p, batch_stats = updating_pass(params, batch_stats, x_p)
      else:  # one power iteration per training step, on the data pass
        out_p, batch_stats = updating_pass(params, state.batch_stats, x_p)
        out_q = apply_fn(variables(params, batch_stats), x_k)
      data_term, flowed_term = jnp.mean(loss.data_term(out_p)), jnp.mean(loss.flowed_term(out_q))
      return data_term + flowed_term, (data_term, flowed_term, out_p, out_q, batch_stats)

    (value, (data_term, flowed_term, out_p, out_q, batch_stats)), grads = jax.value_and_grad(
      objective, has_aux=True
    )(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = lambda new, old: optax.incremental_update(new, old, 1.0 - ema_decay)
    to_ratio = (
      (lambda o: jnp.exp(jnp.clip(o, -80.0, 80.0))) if loss.output == "log_ratio" else (lambda o: o)
    )
    metrics = {
      "loss": value,
      "data_term": data_term,
      "flowed_term": flowed_term,
      "ratio_data": jnp.mean(to_ratio(out_p)),
      "ratio_flowed": jnp.mean(to_ratio(out_q)),
      "grad_norm": optax.tree.norm(grads),
    }
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      ema_params=ema(params, state.ema_params),
      ema_batch_stats=ema(batch_stats, state.ema_batch_stats),
    )
    return new_state, metrics

  return step


# ----------------------------------------------------------------------------------------------
# The method's hooks (``fdrl_jax.methods``): config → pieces the loop and the samplers use.


def init_state(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset, key: Array, *, fit: bool
) -> TrainState:
  """A fresh state with the prior fitted to the data; ``fit=False`` makes a same-shaped template
  (no fit) to restore a checkpoint into."""
  needs_data = fit or datasets.is_translation(config)  # the prior holds source images
  prior_data = datasets.prior_data(config, dataset) if needs_data else None
  prior = prior_fit.build_prior(config, prior_data, dataset.event_shape)
  return create_train_state(
    create_estimator(config), optim.build_optimizer(config), prior, key, dataset.event_shape
  )


def _augments_prior(config: ml_collections.ConfigDict, dataset: bundled.Dataset) -> bool:
  """Whether the prior draws are dequantised (and flipped) as the data: a source image domain."""
  return dataset.is_image and datasets.is_translation(config)


def build_train_step(
  config: ml_collections.ConfigDict,
  dataset: bundled.Dataset,
  particle_sharding: NamedSharding | None,
):
  """``step(state, batch, key)`` of Algorithm 1 for ``config`` (not jitted)."""
  loss, potential = build_potential(config)
  is_image = dataset.is_image
  return make_train_step(
    create_estimator(config).apply,
    optim.build_optimizer(config),
    loss,
    potential,
    build_flow_spec(config),
    dequantization=config.data.dequantization if is_image else 0.0,
    random_flip=config.data.random_flip and is_image,
    ema_decay=config.optim.ema_decay,
    augment_prior=_augments_prior(config, dataset),
    particle_sharding=particle_sharding,
    sn_every_call=config.model.sn_every_call,
  )


def sampler_parts(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset
) -> sampler.SamplerParts:
  """FDRL's sampling pieces: prior draws, the EMA estimator's potential f'(r_θ) and its K + κ
  flow (Algorithm 2), and the estimator itself (for conditional sampling)."""
  model = create_estimator(config)
  loss, potential = build_potential(config)
  # flax types apply's result as maybe (out, state): that is with ``mutable`` only
  apply: Callable[[TrainState], Callable[[Array], Any]] = lambda state: (
    lambda x: model.apply(state.ema_variables(), x)
  )
  return sampler.SamplerParts(
    start=lambda state, key, n: state.prior.sample(key, n),
    potential=lambda state: estimator_potential(model.apply, potential, state.ema_variables()),
    spec=build_flow_spec(config),
    event_shape=tuple(dataset.event_shape),
    input_noise=config.data.dequantization if _augments_prior(config, dataset) else 0.0,
    estimator=sampler.Estimator(apply=apply, output=loss.output, divergence=config.loss.divergence),
  )
