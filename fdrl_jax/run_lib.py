"""The training loop and the sampling command around the pure steps of ``fdrl_jax.train``.

A workdir holds ``config.json`` (the resolved config), ``checkpoints/`` (Orbax, the whole
TrainState with the fitted prior), ``metrics.jsonl`` and ``samples/step_*.png``. Re-running the same
command on the same workdir resumes from the latest checkpoint and replays exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from fdrl_jax import data, gan, images, models, train

# Config keys that may change between runs on the same workdir (everything else must match).
RESUMABLE_CHANGES = ("training", "eval", "refine")
# Sections added with the GAN method: a config.json written before them is an FDRL run, which
# they do not affect.
GAN_SECTIONS = ("method", "gan", "generator", "refine")


class TrainingDiverged(ValueError):
  """The loss became NaN or infinite."""


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def _check_workdir(workdir: str, config: ml_collections.ConfigDict, *, create: bool) -> str:
  """Refuses a workdir that is a file, unwritable, or written by an incompatible config."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file; give a directory.")
  if create:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise ValueError(f"Cannot create --workdir {workdir}: {e.strerror}.") from None
    if not os.access(workdir, os.W_OK):
      raise ValueError(f"--workdir {workdir} is not writable; choose another directory.")
  path = os.path.join(workdir, "config.json")
  new = _config_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if "method" not in old and new["method"] == "fdrl":
      old.update({k: new[k] for k in GAN_SECTIONS})
    diff = sorted(k for k in set(old) | set(new)
                  if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if diff:
      raise ValueError(
          f"--workdir {workdir} was written by a different config (sections differ: "
          f"{', '.join(diff)}); use a new --workdir, or the config in {path}.")
  elif not create:
    raise ValueError(f"--workdir {workdir} holds no run (no config.json); train there first.")
  if create:
    with open(path, "w") as f:
      json.dump(new, f, indent=2)
  return workdir


def _folder(config: ml_collections.ConfigDict, path: str, test_path: str = ""):
  from fdrl_jax import image_data  # imports tensorflow-datasets: only when images are used
  d = config.data
  return image_data.folder_dataset(
      path, image_size=d.image_size, center_crop=d.center_crop or None,
      resize_first=d.resize_first or None, test_path=test_path or None,
      max_fit_samples=d.max_fit_samples)


def _tfds(config: ml_collections.ConfigDict):
  from fdrl_jax import image_data
  d = config.data
  return image_data.tfds_dataset(**image_data.TFDS_PRESETS[d.name], data_dir=d.data_dir or None,
                                 max_fit_samples=d.max_fit_samples)


def _npz(config: ml_collections.ConfigDict):
  from fdrl_jax import image_data
  return image_data.npz_dataset(config.data.path)


IMAGE_SOURCES = {"cifar10": _tfds, "celeb_a": _tfds, "lsun_church": _tfds, "mnist": _tfds,
                 "folder": lambda c: _folder(c, c.data.path, c.data.test_path), "npz": _npz}


def build_dataset(config: ml_collections.ConfigDict) -> data.Dataset:
  """The training data named by ``config.data.name``: bundled, a tfds preset, a folder or npz."""
  name = config.data.name
  if name in data.DATASETS:
    return data.create_dataset(name, seed=config.seed)
  if name not in IMAGE_SOURCES:
    raise ValueError(f"Unknown data set {name!r}. Available: "
                     f"{', '.join(sorted([*data.DATASETS, *IMAGE_SOURCES]))}.")
  if name in ("folder", "npz") and not config.data.path:
    raise ValueError(f"--config.data.name={name} needs --config.data.path=<where the images are>.")
  return IMAGE_SOURCES[name](config)


def _prior_data(config: ml_collections.ConfigDict, dataset: data.Dataset) -> np.ndarray:
  """What the prior is built from: the source domain for "empirical", else training samples."""
  if config.prior.name == "empirical":
    if not config.prior.source_path:
      raise ValueError("--config.prior.name=empirical needs --config.prior.source_path=<folder of "
                       "source-domain images>.")
    source = _folder(config, config.prior.source_path)
    return data.fit_samples(source, config.data.max_fit_samples, config.seed)
  return data.fit_samples(dataset, config.data.max_fit_samples, config.seed)


def prefetch(make: Callable[[int], Any], steps: range, depth: int = 2) -> Iterator[Any]:
  """Yields ``make(step)`` for each step, computed up to ``depth`` steps ahead in a thread.

  A thread rather than Grain or processes: batch making is PIL decoding, NumPy and the host→device
  copy, which release the GIL, and a training step is long next to it, so one thread keeps the
  device fed without another dependency. An error in ``make`` is raised in the consumer.
  """
  items: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def work() -> None:
    try:
      for step in steps:
        item = make(step)
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except Exception as e:  # noqa: BLE001 — handed to the consumer
      items.put(e)

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    for _ in steps:
      item = items.get()
      if isinstance(item, Exception):
        raise item
      yield item
  finally:
    stop.set()


class Run:
  """The pieces of a run built from its config (shared by training and sampling)."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    self.config = config
    self.dataset = build_dataset(config)
    self.model = models.create_model(config.model)
    self.tx = train.build_optimizer(config)
    self.loss, self.potential = train.build_potential(config)
    self.flow_spec = train.build_flow_spec(config)
    self.mesh = train.data_mesh() if mesh is None else mesh
    self.replicated = NamedSharding(self.mesh, P())
    init_key, self.step_key, self.sample_key = jax.random.split(jax.random.key(config.seed), 3)
    self.init_key = init_key
    self._samplers: dict = {}  # flow spec (None: the run's) → jitted sampler

  def new_state(self, fit: bool) -> train.TrainState:
    """A fresh state; ``fit=False`` skips fitting the prior (a template to restore into)."""
    needs_data = fit or self.config.prior.name == "empirical"  # its shape is the data's
    prior_data = _prior_data(self.config, self.dataset) if needs_data else None
    prior = train.build_prior(self.config, prior_data, self.dataset.event_shape)
    state = train.create_train_state(self.model, self.tx, prior, self.init_key,
                                     self.dataset.event_shape)
    return jax.device_put(state, self.replicated)

  def restore(self, mngr: ocp.CheckpointManager, step: int) -> train.TrainState:
    # Shapes only: no parameters initialised, no d×d template prior materialised.
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated),
        jax.eval_shape(lambda: self.new_state(fit=False)))
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return restored.state

  def sampler(self, flow_spec: train.FlowSpec | None = None):
    """Algorithm 2 with this run's estimator and flow (or ``flow_spec``)."""
    return train.make_sampler(self.model.apply, self.potential, flow_spec or self.flow_spec)

  def draw(self, state, key: jax.Array, n: int, flow_spec: train.FlowSpec | None = None
           ) -> jax.Array:
    """``n`` samples of the model in ``state`` (FDRL: the EMA estimator's K + κ flow from the
    prior, or ``flow_spec``'s flow); one compiled sampler per flow."""
    if flow_spec not in self._samplers:
      self._samplers[flow_spec] = self.sampler(flow_spec)
    return self._samplers[flow_spec](state.ema_variables(), state.prior, key, n)

  def prior_samples(self, state, key: jax.Array, n: int) -> np.ndarray | None:
    """Draws of the run's starting distribution, for the prior's own score (None if it has none)."""
    return np.asarray(state.prior.sample(key, n))

  def train_step(self):
    """The jitted, data-parallel ``step(state, batch, key)`` of Algorithm 1 for this config."""
    is_image = self.dataset.is_image
    return train.jit_train_step(
        lambda sharding: train.make_train_step(
            self.model.apply, self.tx, self.loss, self.potential, self.flow_spec,
            dequantization=self.config.data.dequantization if is_image else 0.0,
            random_flip=self.config.data.random_flip and is_image,
            ema_decay=self.config.optim.ema_decay, particle_sharding=sharding), self.mesh)

  def batch(self, step: int):
    """The global batch of training step ``step``, placed on the mesh."""
    return train.global_batch(
        data.get_batch(self.dataset, self.config.seed, step, self.config.data.batch_size),
        self.mesh)


class GANRun(Run):
  """A GAN trained in the MonoFlow view (``config.method = "gan"``, ``fdrl_jax.gan``).

  The discriminator is ``config.model`` (a ratio estimator of ``fdrl_jax.models``); the generator
  is ``config.generator``; the generator loss is −E[h(d)] with h = ``config.gan.h``. Sampling
  draws G(z), refined along the trained discriminator's MonoFlow when ``refine.num_steps`` > 0.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    super().__init__(config, mesh)
    r = config.refine
    self.generator = models.create_generator(config.generator, self.dataset.event_shape,
                                             self.dataset.is_image)
    self.gen_tx, self.disc_tx = gan.build_optimizers(config)
    self.hmap = gan.build_monotone_map(config)
    refine_spec = train.FlowSpec(num_steps=r.num_steps, num_refine_steps=0,
                                 step_size=r.step_size, noise_scale=r.noise_scale,
                                 clip=self.flow_spec.clip)
    self.gan_sampler = gan.make_sampler(
        self.generator.apply, self.model.apply, config.generator.latent_dim,
        gan.build_monotone_map(config, r.h), r.space, refine_spec)

  def new_state(self, fit: bool) -> gan.GANState:
    del fit  # nothing is fitted to the data
    state = gan.create_gan_state(self.generator, self.model, self.gen_tx, self.disc_tx,
                                 self.init_key, self.dataset.event_shape,
                                 self.config.generator.latent_dim)
    return jax.device_put(state, self.replicated)

  def train_step(self):
    return train.jit_train_step(
        lambda sharding: gan.make_gan_step(
            self.generator.apply, self.model.apply, self.gen_tx, self.disc_tx, self.hmap,
            self.config.generator.latent_dim, particle_sharding=sharding), self.mesh)

  def draw(self, state, key, n, flow_spec=None):
    if flow_spec is not None:
      raise ValueError("A GAN run samples G(z) (refined per config.refine), not an FDRL flow.")
    return self.gan_sampler(state, key, n)

  def prior_samples(self, state, key, n):
    return None


RUNS = {"fdrl": Run, "gan": GANRun}


def make_run(config: ml_collections.ConfigDict, mesh=None) -> Run:
  """The run of ``config.method``: FDRL (``Run``) or a MonoFlow GAN (``GANRun``)."""
  if config.method not in RUNS:
    raise ValueError(f"Unknown --config.method={config.method!r}; available: "
                     f"{', '.join(sorted(RUNS))}.")
  return RUNS[config.method](config, mesh)


def _checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def grid_reference(run: Run) -> np.ndarray | None:
  """The points a 2-D sample picture is drawn over: 2 000 training points (None for images)."""
  return None if run.dataset.is_image else data.fit_samples(run.dataset, 2000, run.config.seed)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh=None
                       ) -> train.TrainState:
  """Trains FDRL per ``config`` in ``workdir``, resuming from its latest checkpoint if any."""
  workdir = _check_workdir(workdir, config, create=True)
  run = make_run(config, mesh)
  cfg = config.training
  step_fn = run.train_step()
  reference = grid_reference(run)

  with _checkpoint_manager(workdir, cfg.keep_checkpoints) as mngr:
    latest = mngr.latest_step()
    state = run.new_state(fit=True) if latest is None else run.restore(mngr, latest)
    start = int(state.step)
    if latest is not None:
      print(f"Resuming from the checkpoint of step {latest} in {workdir}", flush=True)
    pending: list[tuple[int, dict]] = []
    last_good = latest
    tty = sys.stderr.isatty()
    bar = tqdm(total=cfg.num_steps, initial=start, disable=not tty, dynamic_ncols=True)
    clock = (time.perf_counter(), start)

    def flush(step: int) -> None:
      nonlocal pending, clock
      fetched = jax.device_get(pending)
      pending = []
      for s, m in fetched:
        if not np.isfinite(m["loss"]):
          raise TrainingDiverged(
              f"Training diverged: the loss is {m['loss']} at step {s}. The last good checkpoint "
              f"(step {last_good}) is kept in {workdir}; lower the learning rate or the flow step "
              "size and train in a new --workdir.")
      if not fetched:
        return
      s, m = fetched[-1]
      now = time.perf_counter()
      rate = (step - clock[1]) / max(now - clock[0], 1e-9)
      clock = (now, step)
      record = {"step": s, **{k: float(v) for k, v in m.items()}, "steps_per_s": rate}
      with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
      if tty:
        bar.set_postfix(loss=f"{record['loss']:.4g}", steps_per_s=f"{rate:.1f}")
      else:
        values = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                           if k not in ("step", "steps_per_s"))
        print(f"step {s}/{cfg.num_steps}  {values}  {rate:.1f} steps/s", flush=True)

    steps = range(start, cfg.num_steps)
    for step, batch in zip(steps, prefetch(run.batch, steps)):
      state, metrics = step_fn(state, batch, run.step_key)
      pending.append((step + 1, metrics))
      bar.update(1)
      done = step + 1
      last = done == cfg.num_steps
      if done % cfg.log_every == 0 or last:
        flush(done)
      if done % cfg.checkpoint_every == 0 or last:
        flush(done)
        mngr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        last_good = done
      if done % cfg.sample_every == 0 or last:
        x = run.draw(state, jax.random.fold_in(run.sample_key, done), cfg.num_grid_samples)
        images.save_samples(np.asarray(x), os.path.join(workdir, "samples",
                                                        f"step_{done:07d}.png"), reference)
    bar.close()
    mngr.wait_until_finished()
  if start >= cfg.num_steps:
    print(f"Training is complete: {workdir} holds step {start} of {cfg.num_steps}; raise "
          "--config.training.num_steps to train longer.", flush=True)
  else:
    print(f"Trained to step {cfg.num_steps}; samples in {os.path.join(workdir, 'samples')}",
          flush=True)
  return state


def restore_latest(config: ml_collections.ConfigDict, workdir: str
                    ) -> tuple[Run, train.TrainState, int]:
  """The run and the state of the latest checkpoint of an existing ``workdir``."""
  workdir = _check_workdir(workdir, config, create=False)
  run = make_run(config)
  with _checkpoint_manager(workdir, config.training.keep_checkpoints) as mngr:
    latest = mngr.latest_step()
    if latest is None:
      raise ValueError(f"--workdir {workdir} has no checkpoint yet; train first.")
    return run, run.restore(mngr, latest), latest


def draw_samples(run: Run, state, num_samples: int, batch_size: int,
                 flow_spec: train.FlowSpec | None = None) -> np.ndarray:
  """``run.draw`` in batches (FDRL: Algorithm 2 with the EMA estimator, the run's flow or
  ``flow_spec``), with a progress bar on a terminal."""
  if num_samples < 1:
    raise ValueError(f"The number of samples must be positive, got {num_samples}.")
  chunks, key = [], jax.random.fold_in(run.sample_key, 0)  # training grids use steps ≥ 1
  with tqdm(total=num_samples, disable=not sys.stderr.isatty(), unit="sample") as bar:
    for i, start in enumerate(range(0, num_samples, batch_size)):
      n = min(batch_size, num_samples - start)
      chunks.append(np.asarray(run.draw(state, jax.random.fold_in(key, i), n, flow_spec)))
      bar.update(n)
  return np.concatenate(chunks)


def refuse_existing(output: str) -> None:
  """A one-line ValueError if ``output`` exists: outputs never replace a user's file."""
  if os.path.exists(output):
    raise ValueError(f"--output {output} exists; choose a new file (nothing was overwritten).")


def write_new_file(output: str, write: Callable[[str], None]) -> str:
  """Creates ``output`` with ``write(temporary_path)``, never replacing an existing file.

  The content goes to a temporary file in the same folder, which is then hard-linked to
  ``output``: atomic, and it fails (a ValueError) if the name appeared meanwhile. On a file system
  without hard links it falls back to an existence check and a rename.
  """
  refuse_existing(output)
  folder = os.path.dirname(os.path.abspath(output))
  os.makedirs(folder, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=folder, prefix=".new-", suffix=os.path.splitext(output)[1],
                                   delete=False) as f:
    tmp = f.name
  try:
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # a temporary file is private; the output need not be
    try:
      os.link(tmp, output)
    except FileExistsError:
      refuse_existing(output)
    except OSError:  # no hard links here
      refuse_existing(output)
      os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return output


def sample_to_file(config: ml_collections.ConfigDict, workdir: str, num_samples: int,
                   output: str, batch_size: int | None = None) -> str:
  """Draws ``num_samples`` with the EMA estimator of the latest checkpoint (K + κ flow steps) and
  writes them to ``output`` (.npz, key ``x``, values clipped to [-1, 1] for images)."""
  refuse_existing(output)  # before the sampling, not after it
  run, state, _ = restore_latest(config, workdir)
  x = draw_samples(run, state, num_samples, batch_size or config.data.batch_size)

  def write(path: str) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
      np.savez(f, x=x)

  return write_new_file(output, write)


def _free_path(path: str) -> str:
  """``path``, or ``path`` with -2, -3, ... before its extension if it exists."""
  stem, ext = os.path.splitext(path)
  candidate, i = path, 1
  while os.path.exists(candidate):
    i += 1
    candidate = f"{stem}-{i}{ext}"
  return candidate


def _classifier_scores(name: str, classifier, run: Run, state, samples: np.ndarray,
                       train: np.ndarray, test: np.ndarray) -> dict:
  """The Fréchet distance of a digit classifier's features (``name`` = fd_digits or fd_mnist) of
  the samples, of the prior's own samples and of the real floor (training vs held-out images),
  and the share of confidently classified samples."""
  from fdrl_jax import evaluate
  prior = run.prior_samples(state, jax.random.fold_in(run.sample_key, 1 << 30), len(samples))
  return {name: evaluate.fd_digits(samples, test, classifier),
          **({} if prior is None else {f"{name}_prior": evaluate.fd_digits(prior, test,
                                                                           classifier)}),
          f"{name}_floor": evaluate.fd_digits(train, test, classifier),
          "confident_share": evaluate.confident_share(samples, classifier),
          "classifier_test_accuracy": classifier.test_accuracy}


def _fd_digits(config, run: Run, state, samples: np.ndarray, workdir: str) -> dict:
  from fdrl_jax import evaluate  # the classifier is trained on first use
  classifier = evaluate.digits_classifier(config.seed)
  return _classifier_scores("fd_digits", classifier, run, state, samples, run.dataset.train,
                            run.dataset.test)


# FD-MNIST: the digit classifier trained on this many MNIST training images, for these steps.
MNIST_CLASSIFIER_IMAGES, MNIST_CLASSIFIER_STEPS = 20_000, 1_500


def _fd_mnist(config, run: Run, state, samples: np.ndarray, workdir: str) -> dict:
  from fdrl_jax import evaluate, image_data
  size = image_data.TFDS_PRESETS["mnist"]["image_size"]
  data_dir = config.data.data_dir or None
  train_x, train_y = image_data.tfds_labelled("mnist", "train", data_dir,
                                              MNIST_CLASSIFIER_IMAGES, image_size=size)
  test_x, test_y = image_data.tfds_labelled("mnist", "test", data_dir, 10_000, image_size=size)
  classifier = evaluate.train_classifier(train_x, train_y, test_x, test_y, seed=config.seed,
                                         steps=MNIST_CLASSIFIER_STEPS)
  return _classifier_scores("fd_mnist", classifier, run, state, samples, train_x[:len(test_x)],
                            test_x)


def _fid(config, run: Run, state: train.TrainState, samples: np.ndarray, workdir: str) -> dict:
  from fdrl_jax import evaluate, inception
  variables = inception.load_weights(config.eval.inception_weights)
  rgb = lambda x: np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
  n_ref = config.eval.num_reference
  cache = os.path.join(workdir, f"fid_stats_{config.data.name}_{n_ref}.npz")
  if os.path.exists(cache):  # the data set's statistics are computed once per workdir
    with np.load(cache) as f:
      mu, sigma = f["mu"], f["sigma"]
  else:
    try:
      reference = run.dataset.sample(np.random.default_rng(config.seed), n_ref)
    except ValueError as e:  # fewer training images than asked for
      raise ValueError(f"FID statistics of {config.data.name!r} cannot be computed: {e}; set "
                       "--config.eval.num_reference to at most the split's size.") from None
    mu, sigma = evaluate.feature_statistics(inception.features(variables, rgb(reference)))
    np.savez(cache, mu=mu, sigma=sigma)
  stats = evaluate.feature_statistics(inception.features(variables, rgb(samples)))
  return {"fid": evaluate.frechet_distance(*stats, mu, sigma), "num_reference": n_ref,
          "fid_variant": "pytorch-fid's InceptionV3 pool3 (TF-FID weights), bilinear resize to "
                         "299, float samples (not quantised to uint8), reference = training data"}


METRICS = {"fd_digits": _fd_digits, "fd_mnist": _fd_mnist, "fid": _fid}


def _check_metric(config: ml_collections.ConfigDict) -> None:
  metric = config.eval.metric
  if metric not in METRICS:
    raise ValueError(f"Unknown --config.eval.metric={metric!r}; available: "
                     f"{', '.join(sorted(METRICS))}.")
  if metric == "fd_digits" and config.data.name != "digits":
    raise ValueError(f"FD-digits needs the bundled digits (data.name=digits), not "
                     f"{config.data.name!r}; use --config.eval.metric=fid.")
  if metric == "fd_mnist" and config.data.name != "mnist":
    raise ValueError(f"FD-MNIST needs tfds MNIST (data.name=mnist), not {config.data.name!r}; "
                     "use --config.eval.metric=fid.")
  for key in ("num_samples", "num_reference"):
    if config.eval[key] < 2:
      raise ValueError(f"--config.eval.{key}={config.eval[key]}: a Fréchet distance needs the "
                       "statistics of at least 2 images (thousands for a meaningful value).")
  weights = config.eval.inception_weights
  if metric == "fid" and not os.path.isfile(weights):
    raise ValueError(f"FID needs --config.eval.inception_weights=FILE.npz (found {weights!r}): "
                     "pytorch-fid's Inception weights converted as fdrl_jax/inception.py says.")


def evaluate_to_file(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Samples ``eval.num_samples`` with the EMA estimator (K + κ steps) and scores them.

  ``eval.metric``: ``"fd_digits"`` (bundled digits only): FD-digits against the held-out split,
  with the same distance for the prior's own samples and the real floor (training vs held-out),
  and the share of confidently classified samples; ``"fd_mnist"`` (tfds MNIST only): the same
  with the classifier trained on 20 000 MNIST training images (about a minute on a CPU) and
  scored against the 10 000 test images; ``"fid"``: FID against the training data's
  Inception statistics (computed once, cached in the workdir). The result is written to
  ``workdir/eval_step_<step>.json`` (a new name if that exists) and returned.
  """
  _check_metric(config)
  run, state, step = restore_latest(config, workdir)
  samples = draw_samples(run, state, config.eval.num_samples, config.data.batch_size)
  workdir = os.path.abspath(workdir)
  result = {"step": step, "metric": config.eval.metric, "num_samples": len(samples),
            **METRICS[config.eval.metric](config, run, state, samples, workdir)}
  path = _free_path(os.path.join(workdir, f"eval_step_{step:07d}.json"))
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  return {**result, "path": path}
