"""The sampling layer: every sampler is "a start + a potential → ``fdrl_jax.flow``".

A method (``fdrl_jax.methods``) offers the samplers its ``SamplerParts``: how to draw starting
particles (FDRL: the prior; a GAN: G(z)), its own potential (FDRL: f'(r_θ(x)), Eq. 9) and flow
settings, and, where it has them, its density-ratio estimator or its generator. A sampler, picked
by ``config.sampling.name`` from ``SAMPLERS``, composes those pieces:

* ``prior``: Algorithm 2 — x₀ from the start, K + κ flow steps along the method's potential (a GAN:
  G(z), no flow).
* ``refine``: DGflow-style refinement of a GAN's G(z) along its discriminator's MonoFlow
  (``config.refine``, latent or data space; ``gan.refine``).
* ``conditional``: class-conditional FDRL (Eq. 12, 29–31): the prior flowed along
  f'(r_θ(x | y = n)) with r(x | y = n) = r_θ(x) / (N p(y = n | x))^ϕ, p(y | x) from a classifier
  trained with ``--config.method=classifier`` (``conditional_potential``).
* ``translate``: unpaired image-to-image translation (Sec. 6.5): given source images flowed K + κ
  steps along the method's potential (the estimator was trained with the source domain as prior).

Each builder returns a ``Sampler`` whose computation is jitted once per run with its particles
split over the devices of the run's "data" mesh (every process gets the whole result); adding a
sampler is one entry in ``SAMPLERS``. The ``sampling`` config section is a sampling choice: like ``eval``, it may
differ from the training run's.
"""

from __future__ import annotations

import collections
import math
import os
import sys
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from fdrl_jax import flows, parallel, priors
from fdrl_jax.divergences import flow_potential
from fdrl_jax.flows import FlowSpec

Array = jax.Array
PotentialFn = Callable[[Array], Array]
State = Any


class Estimator(NamedTuple):
  """A method's density-ratio estimator, for samplers that compose its output with more terms.

  Attributes:
    apply: state → (x ↦ the network's output (B,)), with the parameters used for sampling (EMA).
    output: "ratio" (the network outputs r = q/p) or "log_ratio" (log r).
    divergence: the f-divergence of the method's flow (``divergences.DIVERGENCES``).
  """
  apply: Callable[[State], PotentialFn]
  output: str
  divergence: str


class Generator(NamedTuple):
  """A method's generator x = G(z), z ~ N(0, I), and its discriminator's logit d = log p/q."""
  latent_dim: int
  generate: Callable[[State], Callable[[Array], Array]]
  logit: Callable[[State], PotentialFn]


class SamplerParts(NamedTuple):
  """What a method offers the samplers.

  Attributes:
    start: (state, key, n) → n starting particles (a prior draw, or G(z)).
    potential: state → the method's per-particle potential φ, or None when it does not flow.
    spec: the method's sampling flow (K + κ steps, η, ν, clipping), or None.
    event_shape: the shape of one sample.
    input_noise: σ of the Gaussian noise the method's training adds to its starting particles
      (translation: the source images' dequantisation), added to given inputs too.
    estimator: the density-ratio estimator, if the method has one.
    generator: the generator, if the method has one.
  """
  start: Callable[[State, Array, int], Array]
  potential: Callable[[State], PotentialFn] | None
  spec: FlowSpec | None
  event_shape: tuple[int, ...]
  input_noise: float = 0.0
  estimator: Estimator | None = None
  generator: Generator | None = None


class Sampler(NamedTuple):
  """A built sampler, its particles split over the devices of the run's "data" mesh.

  Attributes:
    sample: ``sample(state, key, n)`` draws n samples or, when ``takes_inputs``,
      ``sample(state, key, x)`` moves the given particles x (N, ...): a NumPy array of exactly
      what was asked for, the same on every process. n (or N) is padded to a multiple of the
      device count for the device computation and the padding dropped.
    device_sample: the jitted computation behind it, ``(state, key, n | x)`` with n (or N) a
      multiple of the device count; its output is split over "data" (each device holds its
      n / devices particles).
    takes_inputs: whether the sampler moves given particles rather than drawing a start.
  """
  sample: Callable[..., np.ndarray]
  device_sample: Callable[..., Array]
  takes_inputs: bool = False


def build_flow_spec(config: ml_collections.ConfigDict) -> FlowSpec:
  """The run's flow (``config.flow``): K, κ, η, ν, and clipping to the data range."""
  f = config.flow
  return FlowSpec(num_steps=f.num_steps, num_refine_steps=f.num_refine_steps,
                  step_size=f.step_size, noise_scale=f.noise_scale,
                  clip=priors.DATA_RANGE if f.clip else None,
                  clip_every_step=f.clip_every_step)


# ----------------------------------------------------------------------------------------------
# Pure potentials.

def conditional_potential(output_fn: PotentialFn, log_prob_fn: Callable[[Array], Array], *,
                          label: int, weight: float, output: str, divergence: str) -> PotentialFn:
  """f'(r(x | y = n)) of Eq. 12 / 29–31, for any divergence and output parameterisation.

  A classifier is a density ratio, N p(y = n | x) = p(x | y = n) / p(x) for N balanced classes, so
  r(x | y = n) = q(x) / p(x | y = n) = r(x) / (N p(y = n | x)). With the paper's weight ϕ on the
  classifier, log r(x | y) = log r(x) − ϕ (log p(y = n | x) + log N). It is formed in the
  estimator's own parameterisation — log r − ϕ(…) for a log-ratio output, r · e^{−ϕ(…)} for a ratio
  output (no log of an LSIF output, which may be ≤ 0) — and passed to the divergence's stable f'.
  With ϕ = 0 this is the unconditional potential. For LR-KL (f' = log r + 1) the flow moves by
  −η ∇(log r − ϕ log p(y | x)): the reference notebook's step with its η, which this package keeps
  (the paper prints 2η in Eq. 30–31; with ϕ = 0 its flow would then run at twice the step size the
  estimator was trained with, which Algorithm 2 does not do).

  Args:
    output_fn: x (B, ...) ↦ the estimator's output (B,).
    log_prob_fn: x (B, ...) ↦ the classifier's log-probabilities (B, N).
    label: the requested class n.
    weight: ϕ (paper: 0.1).
    output: "ratio" or "log_ratio".
    divergence: a key of ``divergences.DIVERGENCES``.
  """
  stable = flow_potential(divergence, output)

  def potential(x: Array) -> Array:
    log_probs = log_prob_fn(x)
    shift = weight * (log_probs[:, label] + math.log(log_probs.shape[-1]))
    out = output_fn(x)
    return stable(out * jnp.exp(-shift) if output == "ratio" else out - shift)

  return potential


# ----------------------------------------------------------------------------------------------
# Samplers: (config, parts) → Sampler.

def _split_sampler(fn: Callable[..., Array], mesh, *, takes_inputs: bool = False) -> Sampler:
  """Jits ``fn(state, key, n | x, *extra)`` with its particles split over "data" (``fn``
  constrains its start with ``_shard``) and wraps it to pad n to the devices and gather the
  result to every process (``Sampler``). ``extra`` arguments are traced, not compiled in."""
  sharding, n_dev = parallel.particles(mesh), mesh.devices.size
  jitted = jax.jit(fn, static_argnums=() if takes_inputs else 2, out_shardings=sharding)

  def sample(state, key, arg, *extra):
    if takes_inputs:
      x = np.asarray(arg)
      n = len(x)
      padded = np.concatenate([x, np.repeat(x[-1:], -n % n_dev, axis=0)])
      out = jitted(state, key, parallel.put_particles(padded, mesh), *extra)
    else:
      n = int(arg)
      out = jitted(state, key, n + (-n % n_dev), *extra)
    return parallel.to_host(out)[:n]

  return Sampler(sample, jitted, takes_inputs)


def _shard(x: Array, mesh) -> Array:
  """Particles inside a sampler's jit, split over "data": each device computes its own."""
  return jax.lax.with_sharding_constraint(x, parallel.particles(mesh))


def _flow_fn(parts: SamplerParts, mesh, potential_of: Callable[[State, Any], PotentialFn]
             ) -> Callable[..., Array]:
  """``fn(state, key, n, extra)``: x₀ = parts.start, split over the devices (mesh None: left
  where it is), then K + κ steps along ``potential_of(state, extra)``. ``extra`` (e.g. a
  classifier's parameters) is a jit argument, not a constant baked into the compiled sampler."""
  kwargs = parts.spec.sampling_kwargs()

  def fn(state, key, n, extra=None):
    k_start, k_flow = jax.random.split(key)
    x0 = parts.start(state, k_start, n)
    x0 = x0 if mesh is None else _shard(x0, mesh)
    return flows.flow(potential_of(state, extra), x0, k_flow, **kwargs)

  return fn


def prior_sample_fn(parts: SamplerParts, mesh=None) -> Callable[[State, Array, int], Array]:
  """The pure ``fn(state, key, n)`` of the ``prior`` sampler: K + κ flow steps from a prior draw,
  or a generator's G(z) as is; split over ``mesh``'s devices, or (None) traced as plain code for
  a caller's own ``jax.jit`` (``fdrl_jax.load``)."""
  if parts.potential is None:  # a generator: its samples are the start itself
    place = (lambda x: x) if mesh is None else (lambda x: _shard(x, mesh))
    return lambda state, key, n: place(parts.start(state, jax.random.split(key)[0], n))
  return _flow_fn(parts, mesh, lambda state, _: parts.potential(state))


def _prior(config: ml_collections.ConfigDict, parts: SamplerParts, mesh) -> Sampler:
  return _split_sampler(prior_sample_fn(parts, mesh), mesh)


def _refine(config: ml_collections.ConfigDict, parts: SamplerParts, mesh) -> Sampler:
  from fdrl_jax import gan
  g = parts.generator
  if g is None:
    raise ValueError("--config.sampling.name=refine refines a generator's samples "
                     "(--config.method=gan); FDRL's own refinement is flow.num_refine_steps.")
  r = config.refine
  hmap = gan.build_monotone_map(config, r.h)
  gan.check_refine_space(r.space)

  def sample(state, key, n):
    k_z, k_flow = jax.random.split(key)
    z = _shard(jax.random.normal(k_z, (n, g.latent_dim)), mesh)
    if r.num_steps == 0:
      return g.generate(state)(z)
    return gan.refine(g.generate(state), g.logit(state), hmap, z, k_flow, space=r.space,
                      num_steps=r.num_steps, step_size=r.step_size, noise_scale=r.noise_scale,
                      clip=parts.spec.clip if parts.spec else None)

  return _split_sampler(sample, mesh)


def _require_estimator(parts: SamplerParts, name: str) -> None:
  if parts.estimator is None or parts.spec is None:
    raise ValueError(f"--config.sampling.name={name} needs an FDRL density-ratio estimator "
                     "(--config.method=fdrl).")


def conditional_sampler(config: ml_collections.ConfigDict, parts: SamplerParts, mesh=None
                        ) -> tuple[Callable[[int, float], Sampler], int]:
  """Class-conditional FDRL with the classifier of ``sampling.classifier_workdir``:
  ``(for_class, num_classes)``, ``for_class(label, weight)`` the ``Sampler`` of class ``label``
  with ϕ = ``weight``, particles split over ``mesh`` (default all devices). Label and ϕ are
  traced arguments, so one compilation serves every class and weight."""
  _require_estimator(parts, "conditional")
  mesh = parallel.data_mesh() if mesh is None else mesh
  s, est = config.sampling, parts.estimator
  log_probs, params, num_classes = load_classifier(s.classifier_workdir,
                                                   event_shape=parts.event_shape)

  def potential_of(state, extra):
    classifier_params, label, weight = extra
    return conditional_potential(est.apply(state), log_probs(classifier_params), label=label,
                                 weight=weight, output=est.output, divergence=est.divergence)

  split = _split_sampler(_flow_fn(parts, mesh, potential_of), mesh)

  def for_class(label: int, weight: float) -> Sampler:
    extra = (params, jnp.asarray(label, jnp.int32), jnp.asarray(weight, jnp.float32))
    return Sampler(lambda state, key, n: split.sample(state, key, n, extra),
                   lambda state, key, n: split.device_sample(state, key, n, extra))

  return for_class, num_classes


def _conditional(config: ml_collections.ConfigDict, parts: SamplerParts, mesh) -> Sampler:
  for_class, num_classes = conditional_sampler(config, parts, mesh)
  label, weight = config.sampling.label, config.sampling.classifier_weight
  if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
    raise ValueError(f"--config.sampling.label={label!r} is not a class of the classifier in "
                     f"{config.sampling.classifier_workdir}: choose 0 to {num_classes - 1}.")
  return for_class(label, weight)


def _translate(config: ml_collections.ConfigDict, parts: SamplerParts, mesh) -> Sampler:
  _require_estimator(parts, "translate")
  kwargs, sigma = parts.spec.sampling_kwargs(), parts.input_noise

  def sample(state, key, x):
    # Given images get the noise that training's starting particles got (source dequantisation).
    k_deq, k_flow = jax.random.split(key)
    x = x + sigma * jax.random.normal(k_deq, x.shape, x.dtype)
    return flows.flow(parts.potential(state), x, k_flow, **kwargs)

  return _split_sampler(sample, mesh, takes_inputs=True)


# name → (config, parts, mesh) → Sampler.
SAMPLERS: dict[str, Callable[[ml_collections.ConfigDict, SamplerParts, Any], Sampler]] = {
    "prior": _prior, "refine": _refine, "conditional": _conditional, "translate": _translate}


def build_sampler(config: ml_collections.ConfigDict, parts: SamplerParts | None,
                  name: str | None = None, mesh=None) -> Sampler:
  """The sampler ``name`` (default ``config.sampling.name``) composed from a method's parts, its
  particles split over ``mesh`` (default: a "data" mesh of all devices)."""
  name = name or config.sampling.name
  if name not in SAMPLERS:
    raise ValueError(f"Unknown --config.sampling.name={name!r}; available: "
                     f"{', '.join(SAMPLERS)}.")
  if parts is None:
    raise ValueError(f"A --config.method={config.method} run does not sample.")
  return SAMPLERS[name](config, parts, parallel.data_mesh() if mesh is None else mesh)


def load_classifier(classifier_workdir: str, *, event_shape: tuple[int, ...]
                    ) -> tuple[Callable[[Any], Callable[[Array], Array]], Any, int]:
  """The guiding classifier of ``--config.sampling.classifier_workdir``: ``(log_probs, params,
  num_classes)`` with ``log_probs(params)`` x ↦ log p(y | x) (B, N), checked against the sampled
  images' shape (one-line ValueErrors)."""
  from fdrl_jax import classifier, run_lib, workdir  # the classifier is restored like any run
  if not classifier_workdir:
    raise ValueError("--config.sampling.name=conditional needs --config.sampling.classifier_workdir"
                     "=DIR, a run of --config.method=classifier (e.g. configs/digits_classifier.py).")
  config = workdir.read_config(classifier_workdir)
  if config.get("method") != "classifier":
    raise ValueError(f"--config.sampling.classifier_workdir {classifier_workdir} holds a "
                     f"{config.get('method', 'fdrl')!r} run, not a classifier; train one with "
                     "--config=configs/digits_classifier.py (or another classifier config).")
  run, state, _ = run_lib.restore_latest(config, classifier_workdir)
  if tuple(run.dataset.event_shape) != tuple(event_shape):
    raise ValueError(f"The classifier in {classifier_workdir} was trained on images of shape "
                     f"{tuple(run.dataset.event_shape)}, but this run samples "
                     f"{tuple(event_shape)}; train a classifier on this data set.")
  model = classifier.build_model(config)
  return ((lambda params: classifier.log_probabilities(model.apply, params)), state.params,
          model.num_classes)


# ----------------------------------------------------------------------------------------------
# Drawing many samples, and the sample / translate modes.

def draw_batches(sampler: Sampler, state, key: Array, num_or_inputs: int | np.ndarray,
                 batch_size: int) -> Iterator[np.ndarray]:
  """``sampler`` in batches of ``batch_size``, one host array per batch: ``num`` samples, or the
  given inputs moved; batch i uses ``fold_in(key, i)``. A progress bar on a terminal (process 0).
  Streaming keeps a paper-size evaluation (50 000 images) out of host memory."""
  inputs = None if isinstance(num_or_inputs, (int, np.integer)) else np.asarray(num_or_inputs)
  total = len(inputs) if inputs is not None else int(num_or_inputs)
  if total < 1:
    raise ValueError(f"The number of samples must be positive, got {total}.")
  quiet = not sys.stderr.isatty() or not parallel.is_writer()
  with tqdm(total=total, disable=quiet, unit="sample") as bar:
    for i, start in enumerate(range(0, total, batch_size)):
      n = min(batch_size, total - start)
      arg = n if inputs is None else inputs[start:start + n]
      yield sampler.sample(state, jax.random.fold_in(key, i), arg)
      bar.update(n)


def draw(sampler: Sampler, state, key: Array, num_or_inputs: int | np.ndarray,
         batch_size: int) -> np.ndarray:
  """All of ``draw_batches`` in one array."""
  return np.concatenate(list(draw_batches(sampler, state, key, num_or_inputs, batch_size)))


def _write_npz(x: np.ndarray) -> Callable[[str], None]:
  def write(path: str) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
      np.savez(f, x=x)
  return write


def sample_to_file(config: ml_collections.ConfigDict, workdir_path: str, num_samples: int,
                   output: str, batch_size: int | None = None) -> str:
  """Draws ``num_samples`` with ``config.sampling`` (default Algorithm 2: the EMA estimator's K + κ
  flow from the prior) from the latest checkpoint and writes them to ``output`` (.npz, key ``x``;
  images in [-1, 1])."""
  from fdrl_jax import files, run_lib
  files.refuse_existing(output)  # before the sampling, not after it
  files.check_writable(output)
  if config.sampling.name == "translate":
    raise ValueError("--config.sampling.name=translate moves given images: use --mode=translate "
                     "--input=FILE.npz|DIR.")
  run, state, _ = run_lib.restore_latest(config, workdir_path,
                                         data_optional=config.sampling.name == "prior")
  files.check_writable(output, 4 * num_samples * math.prod(run.dataset.event_shape))  # float32
  x = draw(run.sampler(), state, run.sample_key_for(0), num_samples,
           batch_size or config.data.batch_size)
  return files.write_new_file(output, _write_npz(x))


def read_images(path: str, config: ml_collections.ConfigDict, event_shape: tuple[int, ...]
                ) -> tuple[np.ndarray, list[str]]:
  """Images to translate, in [-1, 1], and a name for each: an .npz (key ``x``, NHWC, float in
  [-1, 1] or uint8) or a folder of PNG/JPEG files preprocessed as the training folder is
  (``data.image_size``, ``resize_first``, ``center_crop``, ``stretch``; grey when the run's
  images are)."""
  from fdrl_jax import readers
  if os.path.isdir(path):
    files = readers.image_files(path)
    names = [os.path.splitext(os.path.relpath(f, path))[0].replace(os.sep, "_") for f in files]
    shared = [name for name, count in collections.Counter(names).items() if count > 1]
    if shared:
      raise ValueError(f"--input {path} holds several images named {shared[0]} (other extensions "
                       f"or folders), which would all be written as {shared[0]}.png; rename them.")
    d = config.data
    load = readers.folder_loader(files, event_shape[-1], folder=path,
                                    image_size=event_shape[0], center_crop=d.center_crop or None,
                                    resize_first=d.resize_first or None, stretch=d.stretch)
    x = readers.load_all(len(files), load)
  elif os.path.isfile(path) and path.endswith(".npz"):
    with readers.open_npz(path) as arrays:
      x = readers.npz_images(arrays, "x", path)
    names = [f"{i:06d}" for i in range(len(x))]
  else:
    raise ValueError(f"--input {path} is neither an .npz file nor a folder of images.")
  if tuple(x.shape[1:]) != tuple(event_shape):
    raise ValueError(f"--input {path} holds images of shape {tuple(x.shape[1:])}; this run's "
                     f"images have shape {tuple(event_shape)}.")
  if not len(x):
    raise ValueError(f"--input {path} holds no images.")
  return x, names


def translate_to_file(config: ml_collections.ConfigDict, workdir_path: str, input_path: str,
                      output: str, batch_size: int | None = None) -> str:
  """Unpaired translation (Sec. 6.5): flows the images of ``input_path`` K + κ steps with the EMA
  estimator of the latest checkpoint and writes them to ``output``: an .npz (key ``x``, in
  [-1, 1]) or a new folder of PNGs named after the inputs (written whole or not at all,
  ``files.write_new_folder``). Nothing existing is overwritten. A translation run's folders
  are not needed where its prior holds no source images (a reference checkpoint imported without
  them, ``priors.SourcelessPrior``)."""
  from fdrl_jax import files, images, run_lib
  to_folder = not output.endswith(".npz")
  if to_folder:
    files.refuse_existing_folder(output)
  else:
    files.refuse_existing(output)
  files.check_writable(output)
  run, state, _ = run_lib.restore_latest(config, workdir_path, data_optional=True)
  x, names = read_images(input_path, config, run.dataset.event_shape)
  files.check_writable(output, x.nbytes)
  y = draw(run.sampler("translate"), state, run.sample_key_for(0), x,
           batch_size or config.data.batch_size)
  if not to_folder:
    return files.write_new_file(output, _write_npz(y))

  def write_pngs(folder: str) -> None:
    for name, image in zip(names, y):
      images.save_png(images.tile(image[None, None], pad=0, min_size=1),
                      os.path.join(folder, f"{name}.png"))

  return files.write_new_folder(output, write_pngs)
