"""GAN training in the MonoFlow view: estimate the log-ratio field, then move the generator along it.

One training step, all inside one jitted function of (state, data batch, key):

    discriminator:  l = D(x) ≈ log q/p by the package's logistic-regression Bregman loss
                    (``losses.LOSSES["lr"]``: data p against generated samples q), one Adam step;
    generator:      L_G(θ) = −E_z[h(d(G_θ(z)))],  d = −l = log p/q with the *updated*
                    discriminator held fixed, one Adam step.

The generator's gradient is Σᵢ −h'(d(xᵢ)) ∇ₓd(xᵢ) · ∂xᵢ/∂θ: each generated point is pulled along
the MonoFlow velocity h'(d)∇d (``fdrl_jax.monoflow``), and the choice of h is the choice of GAN loss
(vanilla with shift C, non-saturating, logit, arcsinh, ...). The step's randomness is
``fold_in(key, state.step)`` so a resumed run replays exactly; over several devices the batch and the
latent draws are sharded over the "data" axis as in ``fdrl_jax.fdrl``. Sampling G(z), refined or
not (``monoflow.refine``), is ``fdrl_jax.sampling`` composing ``sampler_parts``. Only ``build_*`` and the method hooks
read a config.
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

from fdrl_jax import bundled, generators, models, monoflow, sampler
from fdrl_jax.flows import build_flow_spec
from fdrl_jax.losses import LOSSES
from fdrl_jax.models import training_apply, variables

Array = jax.Array

# The discriminator is the package's logistic-regression ratio estimator: it outputs log q/p.
DISCRIMINATOR_LOSS = LOSSES["lr"]


class GANState(struct.PyTreeNode):
  """Generator and discriminator parameters and optimizer states; saved whole by the checkpoints.

  ``gen_stats`` and ``disc_stats`` hold the networks' batch-norm statistics (empty for networks
  without batch norm).
  """

  step: Array
  gen_params: Any
  gen_stats: Any
  disc_params: Any
  gen_opt_state: Any
  disc_opt_state: Any
  disc_stats: Any = struct.field(default_factory=dict)

  def generator_variables(self) -> dict:
    return variables(self.gen_params, self.gen_stats)


# ----------------------------------------------------------------------------------------------
# Builders: the only functions here that read a config.


def build_monotone_map(
  config: ml_collections.ConfigDict, name: str | None = None
) -> monoflow.MonotoneMap:
  """The generator's h (``gan.h``, or ``name``: ``refine.h``) with its parameters (``gan.shift``,
  ``gan.scale``)."""
  g = config.gan
  return monoflow.get_map(
    name or g.h,
    shift=g.shift,
    scale=g.scale,
    setting="--config.refine.h" if name else "--config.gan.h",
  )


def build_optimizers(
  config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Adam for the generator and the discriminator (the DCGAN settings: β₁ = 0.5)."""
  g = config.gan
  return (
    optax.adam(g.gen_learning_rate, b1=g.b1, b2=g.b2),
    optax.adam(g.disc_learning_rate, b1=g.b1, b2=g.b2),
  )


# ----------------------------------------------------------------------------------------------
# Pure functions.


def create_gan_state(
  generator: nn.Module,
  discriminator: nn.Module,
  gen_tx: optax.GradientTransformation,
  disc_tx: optax.GradientTransformation,
  key: Array,
  event_shape: tuple[int, ...],
  latent_dim: int,
) -> GANState:
  """Initialises both networks after checking, from shapes alone, that they fit the data.

  Raises:
    ValueError: (one line) if the generator does not produce ``event_shape`` samples or the
      discriminator does not give one value per sample.
  """
  k_gen, k_disc = jax.random.split(key)
  z = jax.ShapeDtypeStruct((2, latent_dim), jnp.float32)
  gen_shape = jax.eval_shape(lambda z: generator.init_with_output(k_gen, z)[0], z).shape
  if gen_shape[1:] != tuple(event_shape):
    raise ValueError(
      f"The generator makes samples of shape {gen_shape[1:]} but the data have "
      f"shape {tuple(event_shape)}; fix --config.generator (name, channels) for "
      "this data set."
    )
  x = jax.ShapeDtypeStruct((2, *event_shape), jnp.float32)
  disc_shape = jax.eval_shape(lambda x: discriminator.init_with_output(k_disc, x)[0], x).shape
  if disc_shape != (2,):
    raise ValueError(
      f"The discriminator must give one value per sample, shape (batch,), but gives "
      f"{disc_shape} for a batch of 2; choose a --config.model that ends in one "
      "output."
    )

  @jax.jit
  def init(k_gen, k_disc):
    gen_vars = generator.init(k_gen, jnp.zeros((1, latent_dim)))
    disc_vars = discriminator.init(k_disc, jnp.zeros((1, *event_shape)))
    gen_params, disc_params = gen_vars["params"], disc_vars["params"]
    return GANState(
      step=jnp.zeros((), jnp.int32),
      gen_params=gen_params,
      gen_stats=gen_vars.get("batch_stats", {}),
      disc_params=disc_params,
      gen_opt_state=gen_tx.init(gen_params),
      disc_opt_state=disc_tx.init(disc_params),
      disc_stats=disc_vars.get("batch_stats", {}),
    )

  return init(k_gen, k_disc)


def discriminator_logit(
  disc_apply: Callable, disc_params, disc_stats=None
) -> Callable[[Array], Array]:
  """x ↦ d(x) = log p/q of a discriminator trained with DISCRIMINATOR_LOSS (which outputs log q/p);
  a per-sample function (batch norm, if any, on its running averages)."""
  disc_vars = variables(disc_params, disc_stats)
  return lambda x: monoflow.logit_from_log_ratio(disc_apply(disc_vars, x))


def make_gan_step(
  gen_apply: Callable,
  disc_apply: Callable,
  gen_tx: optax.GradientTransformation,
  disc_tx: optax.GradientTransformation,
  hmap: monoflow.MonotoneMap,
  latent_dim: int,
  *,
  particle_sharding: NamedSharding | None = None,
  reuse_fake: bool = False,
) -> Callable[[GANState, Array, Array], tuple[GANState, dict[str, Array]]]:
  """One discriminator step, then one generator step, as ``step(state, batch, key)``.

  Args:
    gen_apply, disc_apply: the networks' ``apply`` functions (Flax modules' ``apply``).
    gen_tx, disc_tx: their optimizers.
    hmap: the increasing map h of the generator loss −E[h(d(G(z)))].
    latent_dim: dimension of z ~ N(0, I).
    particle_sharding: sharding of the latent draws (the data sharding), when data-parallel.
    reuse_fake: MonoFlow's ``train_gan.py``: one generator forward per step, whose samples train
      the discriminator and then carry the generator's gradient. False: the generator step draws
      fresh latents.
  """

  def latents(key, n):
    z = jax.random.normal(key, (n, latent_dim))
    return (
      z if particle_sharding is None else jax.lax.with_sharding_constraint(z, particle_sharding)
    )

  def step(state: GANState, batch: Array, key: Array):
    k_disc, k_gen = jax.random.split(jax.random.fold_in(key, state.step))
    n = batch.shape[0]
    generate = lambda params, z: training_apply(gen_apply, params, state.gen_stats, z, train=True)
    discriminate = lambda params, stats, x: training_apply(
      disc_apply, params, stats, x, update_stats=True
    )
    if reuse_fake:
      fake, gen_vjp, gen_stats = jax.vjp(
        lambda p: generate(p, latents(k_disc, n)), state.gen_params, has_aux=True
      )
    else:
      fake, _ = generate(state.gen_params, latents(k_disc, n))

    def disc_objective(params):
      out_data, stats = discriminate(params, state.disc_stats, batch)
      out_fake, stats = discriminate(params, stats, jax.lax.stop_gradient(fake))
      return DISCRIMINATOR_LOSS(out_data, out_fake), (out_data, out_fake, stats)

    (disc_loss, (out_data, out_fake, disc_stats)), disc_grads = jax.value_and_grad(
      disc_objective, has_aux=True
    )(state.disc_params)
    updates, disc_opt_state = disc_tx.update(disc_grads, state.disc_opt_state, state.disc_params)
    disc_params = optax.apply_updates(state.disc_params, updates)
    frozen = jax.lax.stop_gradient(disc_params)  # d held fixed for the generator

    def h_objective(x, stats):
      out, stats = discriminate(frozen, stats, x)
      d = monoflow.logit_from_log_ratio(out)
      return -jnp.mean(hmap.h(d)), (stats, d)

    if reuse_fake:
      (gen_loss, (disc_stats, d_gen)), fake_grad = jax.value_and_grad(h_objective, has_aux=True)(
        fake, disc_stats
      )
      (gen_grads,) = gen_vjp(fake_grad)
    else:

      def gen_objective(params):
        x, stats = generate(params, latents(k_gen, n))
        loss, (d_stats, d) = h_objective(x, disc_stats)
        return loss, (stats, d_stats, d)

      (gen_loss, (gen_stats, disc_stats, d_gen)), gen_grads = jax.value_and_grad(
        gen_objective, has_aux=True
      )(state.gen_params)
    updates, gen_opt_state = gen_tx.update(gen_grads, state.gen_opt_state, state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, updates)
    metrics = {
      "loss": disc_loss + gen_loss,
      "disc_loss": disc_loss,
      "gen_loss": gen_loss,
      # D(x) = σ(d): the classifier's probability of "data", on data and on generated samples.
      "d_data": jnp.mean(jax.nn.sigmoid(-out_data)),
      "d_fake": jnp.mean(jax.nn.sigmoid(-out_fake)),
      # Mean h'(d) on the generator's batch: near 0 means the generator loss saturates.
      "h_slope": jnp.mean(hmap.h_prime(d_gen)),
      "gen_grad_norm": optax.tree.norm(gen_grads),
    }
    return state.replace(
      step=state.step + 1,
      gen_params=gen_params,
      gen_stats=gen_stats,
      disc_params=disc_params,
      disc_stats=disc_stats,
      gen_opt_state=gen_opt_state,
      disc_opt_state=disc_opt_state,
    ), metrics

  return step


# ----------------------------------------------------------------------------------------------
# The method's hooks (``fdrl_jax.methods``).


def _networks(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset
) -> tuple[nn.Module, nn.Module]:
  generator = generators.create_generator(config.generator, dataset.event_shape, dataset.is_image)
  return generator, models.create_model(config.model)


def init_state(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset, key: Array, *, fit: bool
) -> GANState:
  """Fresh generator and discriminator (nothing is fitted to the data, so ``fit`` is unused)."""
  del fit
  gen_tx, disc_tx = build_optimizers(config)
  return create_gan_state(
    *_networks(config, dataset),
    gen_tx,
    disc_tx,
    key,
    dataset.event_shape,
    config.generator.latent_dim,
  )


def build_train_step(
  config: ml_collections.ConfigDict,
  dataset: bundled.Dataset,
  particle_sharding: NamedSharding | None,
):
  generator, discriminator = _networks(config, dataset)
  gen_tx, disc_tx = build_optimizers(config)
  return make_gan_step(
    generator.apply,
    discriminator.apply,
    gen_tx,
    disc_tx,
    build_monotone_map(config),
    config.generator.latent_dim,
    particle_sharding=particle_sharding,
    reuse_fake=config.gan.reuse_fake,
  )


def sampler_parts(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset
) -> sampler.SamplerParts:
  """G(z) as the start (the ``prior`` sampler draws it as is); the generator and the trained
  discriminator's logit for the ``refine`` sampler."""
  generator, discriminator = _networks(config, dataset)
  latent_dim = config.generator.latent_dim

  def generate(state: GANState) -> Callable[[Array], Array]:
    # flax types Module.apply's result as `out | (out, variables)` whatever `mutable` is; without
    # `mutable` it is the samples.
    return lambda z: generator.apply(state.generator_variables(), z)  # type: ignore[return-value]

  logit = lambda state: discriminator_logit(
    discriminator.apply, state.disc_params, state.disc_stats
  )
  return sampler.SamplerParts(
    start=lambda state, key, n: generate(state)(jax.random.normal(key, (n, latent_dim))),
    potential=None,
    spec=build_flow_spec(config),
    event_shape=tuple(dataset.event_shape),
    generator=sampler.Generator(latent_dim=latent_dim, generate=generate, logit=logit),
  )
