"""python -m fdrl_jax.import_reference: reference checkpoints, built here by hand in the layout of
clear-nus/fdrl's ``src/models.py`` and written without torch, imported and compared with forward
passes computed independently in NumPy (NCHW, the reference's order of operations)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import (fdrl, import_reference, modes, reference_config, reference_weights,
                      torch_files)
from helpers import conv_nchw
from tests import torch_format

SLOPE = 0.2


def _lrelu(x):
  return np.where(x > 0, x, SLOPE * x)


def _normalize(x):
  return x / max(np.linalg.norm(x), 1e-12)


def _sn_weight(state, name):
  """The reference's train-mode spectral norm: one power iteration from the stored u."""
  w, u = state[name + ".weight_orig"], state[name + ".weight_u"]
  mat = w.reshape(w.shape[0], -1).astype(np.float64)
  v = _normalize(mat.T @ u)
  u = _normalize(mat @ v)
  return w / (u @ mat @ v)


def _weight(state, name, sn):
  return _sn_weight(state, name) if sn else state[name + ".weight"].astype(np.float64)


# The reference's ResNet32x32 at width 1/16: stem 8, stages (8, 3, 1), (16, 3, 2) x 3.
STEM, STAGES = 8, [(8, 3, 1), (16, 3, 2), (16, 3, 2), (16, 3, 2)]


def _resnet32_state(rng, sn, attention, converged=False):
  """A state_dict in the reference's names for ResNet32x32 (width 1/16)."""
  state = {}

  def conv(name, o, i, k, bias=False):
    w = rng.normal(0, (i * k * k) ** -0.5, (o, i, k, k)).astype(np.float32)
    if sn:
      mat = w.reshape(o, -1)
      u = _normalize(rng.normal(size=o))
      for _ in range(300 if converged else 0):
        u = _normalize(mat @ _normalize(mat.T @ u))
      state[name + ".weight_orig"] = w
      state[name + ".weight_u"] = u.astype(np.float32)
      state[name + ".weight_v"] = _normalize(mat.T @ u).astype(np.float32)
    else:
      state[name + ".weight"] = w
    if bias:
      state[name + ".bias"] = rng.normal(0, 0.1, o).astype(np.float32)

  conv("conv1", STEM, 3, 3)
  in_planes = STEM
  for s, (planes, blocks, stride) in enumerate(STAGES):
    for b in range(blocks):
      conv(f"layer{s + 1}.{b}.conv1", planes, in_planes, 3)
      conv(f"layer{s + 1}.{b}.conv2", planes, planes, 3)
      if (stride if b == 0 else 1) != 1 or in_planes != planes:
        conv(f"layer{s + 1}.{b}.shortcut_conv", planes, in_planes, 1)
      in_planes = planes
    if attention and s == 0:
      state["self_attn_module.gamma"] = np.array(0.7, np.float32)
      for name in ("key", "query", "value"):
        conv(f"self_attn_module.{name}", planes // 8, planes, 1, bias=True)
      conv("self_attn_module.self_att", planes, planes // 8, 1, bias=True)
  w = rng.normal(0, 0.25, (1, in_planes)).astype(np.float32)
  if sn:
    state["linear.bias"] = np.array([0.3], np.float32)
    state["linear.weight_orig"] = w
    state["linear.weight_u"] = np.array([1.0], np.float32)
    state["linear.weight_v"] = _normalize(w[0]).astype(np.float32)
  else:
    state["linear.weight"], state["linear.bias"] = w, np.array([0.3], np.float32)
  return state


def _resnet32_forward(state, x, sn, attention):
  """The reference ResNet32x32's forward pass in NumPy (NCHW)."""
  out = _lrelu(conv_nchw(x, _weight(state, "conv1", sn), pad=1))
  for s, (planes, blocks, stride) in enumerate(STAGES):
    for b in range(blocks):
      p = f"layer{s + 1}.{b}."
      st = stride if b == 0 else 1
      h = _lrelu(conv_nchw(out, _weight(state, p + "conv1", sn), st, 1))
      h = conv_nchw(h, _weight(state, p + "conv2", sn), 1, 1)
      short = out
      if p + "shortcut_conv.weight" in state or p + "shortcut_conv.weight_orig" in state:
        short = conv_nchw(out, _weight(state, p + "shortcut_conv", sn), st)
      out = _lrelu(h + short)
    if attention and s == 0:
      a = "self_attn_module."
      bsz, c, hh, ww = out.shape
      f, g, v = (conv_nchw(out, _weight(state, a + n, sn), bias=state[a + n + ".bias"]).reshape(
          bsz, -1, hh * ww) for n in ("key", "query", "value"))
      scores = np.einsum("bci,bcj->bij", f, g)
      beta = np.exp(scores - scores.max(axis=1, keepdims=True))
      beta /= beta.sum(axis=1, keepdims=True)  # softmax over dim 1 (keys)
      att = np.einsum("bci,bij->bcj", v, beta).reshape(bsz, -1, hh, ww)
      o = conv_nchw(att, _weight(state, a + "self_att", sn), bias=state[a + "self_att.bias"])
      out = state[a + "gamma"] * o + out
  pooled = out.mean(axis=(2, 3))
  return pooled @ _weight(state, "linear", sn).T[:, 0] + state["linear.bias"][0]


def _reference_config(**changes):
  config = {"dataset": "cifar10", "img_size": 32, "n_channels": 3, "model": "resnet",
            "loss_function": "LSIF", "f_divergence": "Pearson", "eta": 3.0, "n_flow_steps": 100,
            "noise_factor": 0.01, "ema": True, "ema_rate": 0.998, "learning_rate": 1e-4,
            "scheduler_gamma": 0.1, "scheduler_steps": [80000, 90000], "n_epochs": 100000,
            "train_batch_size": 64, "spectral_norm": True, "self_attn": True}
  return {**config, **changes}


def _checkpoint(model, ema, config, step=41, prefix="module."):
  """The dict train_ddp.py saves, with Adam's state for every parameter."""
  rng = np.random.default_rng(5)
  names = [n for n in model if not n.endswith((".weight_u", ".weight_v"))]
  optim = {"state": {i: {"step": np.array(step + 1.0, np.float32),
                         "exp_avg": rng.normal(size=model[n].shape).astype(np.float32),
                         "exp_avg_sq": rng.uniform(size=model[n].shape).astype(np.float32)}
                     for i, n in enumerate(names)},
           "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                             "params": list(range(len(names)))}]}
  scheduler = torch_format.instance("torch.optim.lr_scheduler", "ExponentialLR", gamma=0.1)
  return {"step": step, "model": {prefix + k: v for k, v in model.items()}, "optim": optim,
          "ema": ema, "scheduler": scheduler, "config": config}


def _one_line_error(fn, *args, match, **kwargs):
  with pytest.raises(ValueError, match=match) as info:
    fn(*args, **kwargs)
  assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
  rng = np.random.default_rng(3)
  a = rng.normal(size=(3072, 20))
  cov, mean = a @ a.T / 20 + 0.05 * np.eye(3072), rng.normal(0, 0.3, 3072)
  path = torch_format.torch_save(tmp_path_factory.mktemp("prior") / "cifar10_ddp.pt",
                                 torch_format.multivariate_normal(mean, cov))
  return path, mean, cov


@pytest.mark.parametrize("sn,attention", [(True, True), (False, False)], ids=["sn_attn", "plain"])
def test_resnet32_matches_numpy_forward(tmp_path, prior_file, sn, attention):
  rng = np.random.default_rng(0)
  model_sd = _resnet32_state(rng, sn, attention)
  ema_sd = _resnet32_state(rng, sn, attention)
  ckpt = _checkpoint(model_sd, ema_sd, _reference_config(spectral_norm=sn, self_attn=attention))
  source = torch_format.torch_save(tmp_path / "ckpt.pt", ckpt)
  workdir, step = import_reference.import_checkpoint(source, str(tmp_path / "w"), prior_file[0])
  assert step == 42
  config = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert config["model"]["name"] == "resnet32" and config["model"]["resnet_width"] == 1 / 16
  assert config["model"]["spectral_norm"] is sn and config["model"]["self_attention"] is attention
  assert config["model"]["neutral_init"] is False and config["flow"]["clip_every_step"] is False
  assert config["loss"] == {"name": "lsif", "divergence": "pearson"}
  assert config["optim"]["decay_steps"] == [80000, 90000]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "42"))

  cfg = reference_config.reference_config(torch_files.load(source), source)
  cfg.model.resnet_width = 1 / 16
  state = import_reference.build_state(cfg, torch_files.load(source), None, source)
  model = fdrl.create_estimator(cfg)
  x = rng.uniform(-1, 1, (2, 3, 32, 32))
  to_nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1), jnp.float32)
  for sd, variables in ((model_sd, {"params": state.params, "batch_stats": state.batch_stats}),
                        (ema_sd, state.ema_variables())):
    want = _resnet32_forward(sd, x, sn, attention)
    got = np.asarray(model.apply(variables, to_nhwc(x)))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
  # fdrl_jax.load restores the workdir (the cifar10 images need not be here) as the CLI does.
  import fdrl_jax
  loaded = fdrl_jax.load(workdir)
  np.testing.assert_allclose(np.asarray(jax.jit(loaded.output)(to_nhwc(x))), want, rtol=2e-4,
                             atol=2e-5)
  if sn:
    assert loaded.sample(jax.random.key(0), 2).shape == (2, 32, 32, 3)
  # Adam: torch's per-parameter moments in Flax's layout, its step as optax's count.
  adam = state.opt_state[0]
  assert int(adam.count) == 42 and int(state.step) == 42
  kernel_name = "conv1.weight_orig" if sn else "conv1.weight"
  names = [n for n in model_sd if not n.endswith((".weight_u", ".weight_v"))]
  want_mu = ckpt["optim"]["state"][names.index(kernel_name)]["exp_avg"]
  np.testing.assert_array_equal(np.asarray(adam.mu["Conv_0"]["kernel"]),
                                want_mu.transpose(2, 3, 1, 0))


def test_spectral_norm_sigma_is_top_singular_value_when_converged(tmp_path):
  rng = np.random.default_rng(1)
  sd = _resnet32_state(rng, True, True, converged=True)
  ckpt = _checkpoint(sd, sd, _reference_config())
  source = torch_format.torch_save(tmp_path / "ckpt.pt", ckpt)
  cfg = reference_config.reference_config(torch_files.load(source), source)
  cfg.model.resnet_width = 1 / 16
  state = import_reference.build_state(cfg, torch_files.load(source), None, source)
  w = sd["layer2.0.conv1.weight_orig"]
  top = np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)[0]
  stats = state.batch_stats["ResBlock_3"]["_Layer_0"]["SpectralNorm_0"]
  np.testing.assert_allclose(float(stats["Conv_0/kernel/sigma"]), top, rtol=1e-5)
  # The forward pass divides by that σ: NumPy with the SVD's σ gives the same outputs.
  svd_sd = {k: v for k, v in sd.items()}
  x = rng.uniform(-1, 1, (2, 3, 32, 32))
  want = _resnet32_forward(svd_sd, x, True, True)
  got = fdrl.create_estimator(cfg).apply(state.ema_variables(),
                                         jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5)


def test_toy_mlp_matches_numpy_forward(tmp_path):
  rng = np.random.default_rng(2)
  widths = [2, 16, 16, 16, 16, 1]
  sd = {}
  for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
    sd[f"mlp.{2 * i}.weight"] = rng.normal(0, n_in ** -0.5, (n_out, n_in)).astype(np.float32)
    sd[f"mlp.{2 * i}.bias"] = rng.normal(0, 0.1, n_out).astype(np.float32)
  config = {"dataset": "8gaussians", "in_dim": 2, "hidden_dim": 16, "n_hidden_layers": 3,
            "spectral_norm": False, "loss_function": "LR", "f_divergence": "KL", "eta": 1.0,
            "n_flow_steps": 200, "noise_factor": 0.01, "ema": True, "ema_rate": 0.998,
            "learning_rate": 5e-5, "scheduler_gamma": 0.1, "scheduler_steps": [5000],
            "n_epochs": 20000, "train_batch_size": 1024}
  source = torch_format.torch_save(tmp_path / "toy.pt", _checkpoint(sd, sd, config, 999, ""))
  workdir, step = import_reference.import_checkpoint(source, str(tmp_path / "w"))
  assert step == 1000
  ckpt = torch_files.load(source)
  cfg = reference_config.reference_config(ckpt, source)
  assert (cfg.model.name, cfg.model.width, cfg.model.depth) == ("mlp", 16, 4)
  assert (cfg.prior.name, cfg.loss.name, cfg.loss.divergence) == ("normal", "lr", "kl")
  state = import_reference.build_state(cfg, ckpt, None, source)
  x = rng.normal(size=(5, 2))
  h = x
  for i in range(5):
    h = h @ sd[f"mlp.{2 * i}.weight"].T.astype(np.float64) + sd[f"mlp.{2 * i}.bias"]
    h = _lrelu(h) if i < 4 else h[:, 0]
  got = fdrl.create_estimator(cfg).apply(state.ema_variables(), jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), h, rtol=1e-5, atol=1e-6)
  # The workdir loads, samples and resumes training like one this library wrote.
  import fdrl_jax
  from fdrl_jax import run_lib, workdir as workdirs
  np.testing.assert_allclose(np.asarray(jax.jit(fdrl_jax.load(workdir).output)(
      jnp.asarray(x, jnp.float32))), h, rtol=1e-5, atol=1e-6)
  config = workdirs.read_config(workdir)
  config.training.num_steps = 1002
  run, restored, restored_step = run_lib.restore_latest(config, workdir)
  assert restored_step == 1000
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, restored.opt_state, state.opt_state)
  assert np.all(np.isfinite(run.draw(restored, jax.random.key(0), 8)))
  final = run_lib.train_and_evaluate(config, workdir)
  assert int(final.step) == 1002 and int(final.opt_state[0].count) == 1002


def _reference_resnet_state(config, rng):
  """A reference ``state_dict`` with spectral norm of the estimator ``config.model`` builds:
  random weights in torch's layout, shaped after this library's Flax parameters."""
  side = config.data.image_size
  params = jax.eval_shape(fdrl.create_estimator(config).init, jax.random.key(0),
                          jnp.zeros((1, side, side, 3)))["params"]
  get = lambda path: functools.reduce(lambda tree, key: tree[key], path, params)
  sd = {}
  for layer in reference_weights.resnet_layers(config.model.name, config.model.self_attention):
    shape = get(layer.params + ("kernel",)).shape
    shape = (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else shape[::-1]
    sd[layer.torch + ".weight_orig"] = rng.normal(0, 0.1, shape).astype(np.float32)
    sd[layer.torch + ".weight_u"] = _normalize(rng.normal(size=shape[0])).astype(np.float32)
    sd[layer.torch + ".weight_v"] = _normalize(
        rng.normal(size=int(np.prod(shape[1:])))).astype(np.float32)
    if layer.bias:
      sd[layer.torch + ".bias"] = rng.normal(0, 0.1, shape[0]).astype(np.float32)
  sd["self_attn_module.gamma"] = np.full(get(("SelfAttention_0", "gamma")).shape, 0.5, np.float32)
  return sd


def test_cat2dog_imports_without_its_data_and_translates_given_images(tmp_path):
  from PIL import Image
  from fdrl_jax import priors, run_lib, workdir as workdirs
  ref = _reference_config(dataset="cat2dog", img_size=64, model="resnetshallow", n_flow_steps=2)
  config = reference_config.reference_config({"config": ref}, "cat2dog.pt")
  config.model.resnet_width = 8 / 64  # 8 channels in the stem
  sd = _reference_resnet_state(config, np.random.default_rng(7))
  source = torch_format.torch_save(tmp_path / "cat2dog.pt", _checkpoint(sd, sd, ref))
  workdir, step = import_reference.import_checkpoint(source, str(tmp_path / "w"))  # no images
  assert step == 42
  config = workdirs.read_config(workdir)
  assert (config.prior.name, config.data.path, config.prior.source_path) == ("empirical", "", "")
  cats = np.random.default_rng(8).uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  np.savez(tmp_path / "cats.npz", x=cats)
  out = modes.translate_to_file(config, workdir, str(tmp_path / "cats.npz"),
                                   str(tmp_path / "dogs.npz"))
  with np.load(out) as f:
    dogs = f["x"]
  assert dogs.shape == cats.shape and np.all(np.isfinite(dogs)) and not np.allclose(dogs, cats)
  # The prior's draws need the source images: one line, for sampling and for training.
  _one_line_error(modes.sample_to_file, config, workdir, 2, str(tmp_path / "s.npz"),
                  match="empirical prior holds no source images")
  for folder in ("cats", "dogs"):
    (tmp_path / folder).mkdir()
    for i in range(2):
      Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(tmp_path / folder / f"{i}.png")
  config.data.path, config.prior.source_path = str(tmp_path / "dogs"), str(tmp_path / "cats")
  workdirs.write_config(workdir, config)  # the data put into its config.json by hand
  _one_line_error(run_lib.train_and_evaluate, config, workdir,
                  match=r"step 42 in .* holds no source images .* import it again with its data")
  # Imported with its images, the prior holds them; translating then needs them, as for a run
  # trained here.
  with_data, _ = import_reference.import_checkpoint(source, str(tmp_path / "w2"), overrides=[
      f"--config.data.path={tmp_path / 'dogs'}", f"--config.prior.source_path={tmp_path / 'cats'}"])
  config = workdirs.read_config(with_data)
  _, state, _ = run_lib.restore_latest(config, with_data)
  assert isinstance(state.prior, priors.EmpiricalPrior) and state.prior.data.shape[0] == 2
  modes.sample_to_file(config, with_data, 2, str(tmp_path / "s.npz"))
  (tmp_path / "dogs").rename(tmp_path / "gone")
  _one_line_error(modes.translate_to_file, config, with_data, str(tmp_path / "cats.npz"),
                  str(tmp_path / "d2.npz"), match="dogs")


def test_reference_prior_is_read_in_nhwc_order(prior_file):
  path, mean, cov = prior_file
  prior = reference_config.read_prior(path, (32, 32, 3))
  order = np.arange(3072).reshape(3, 32, 32).transpose(1, 2, 0).ravel()
  np.testing.assert_allclose(np.asarray(prior.mean), mean[order], rtol=1e-5, atol=1e-6)
  tril = np.asarray(prior.scale_tril, np.float64)
  rows = [0, 1, 100, 3071]
  np.testing.assert_allclose(tril[rows] @ tril[rows].T, cov[order][:, order][rows][:, rows],
                             rtol=1e-3, atol=1e-4)
  _one_line_error(reference_config.read_prior, path, (64, 64, 3),
                  match=r"has dimension 3072; the checkpoint's data have 64 × 64 × 3 = 12288")


def test_bad_input_is_one_line(tmp_path, prior_file, capsys):
  (tmp_path / "junk.pt").write_bytes(b"junk")
  run = import_reference.import_checkpoint
  _one_line_error(run, str(tmp_path / "junk.pt"), str(tmp_path / "a"),
                  match="junk.pt is not a readable torch.save file")
  plain = torch_format.torch_save(tmp_path / "sd.pt", {"w": np.ones(2, np.float32)})
  _one_line_error(run, plain, str(tmp_path / "a"), match="not a checkpoint of the reference")
  sd = _resnet32_state(np.random.default_rng(0), False, False)
  for change, match in (({"img_size": 48}, r"no estimator for img_size=48"),
                        ({"model": "resnet18", "img_size": 64, "dataset": "celeba"},
                         r"64² model 'resnet18' is not in this library"),
                        ({"dataset": "mnist"}, r"data set 'mnist' has no config"),
                        ({"f_divergence": "Hellinger"}, r"f_divergence='Hellinger' is not one")):
    bad = torch_format.torch_save(tmp_path / "bad.pt", _checkpoint(
        sd, sd, _reference_config(spectral_norm=False, self_attn=False, **change)))
    _one_line_error(run, bad, str(tmp_path / "a"), match=match)
  extra = torch_format.torch_save(tmp_path / "extra.pt", _checkpoint(
      {**sd, "layer5.0.conv1.weight": np.ones((1, 1, 3, 3), np.float32)}, sd,
      _reference_config(spectral_norm=False, self_attn=False)))
  _one_line_error(run, extra, str(tmp_path / "a"), prior_path=prior_file[0],
                  match=r"layer5.0.conv1.weight is not part of the reference's resnet32")
  # Spectral norm in the config, plain weights in the file.
  bad = torch_format.torch_save(tmp_path / "bad.pt", _checkpoint(sd, sd, _reference_config()))
  _one_line_error(run, bad, str(tmp_path / "a"), prior_path=prior_file[0],
                  match=r"lacks conv1.weight_orig \(spectral norm is on in its config\)")
  good = torch_format.torch_save(tmp_path / "good.pt", _checkpoint(
      sd, sd, _reference_config(spectral_norm=False, self_attn=False, img_size=64,
                                dataset="celeba")))
  _one_line_error(run, good, str(tmp_path / "a"), prior_path=prior_file[0],
                  match=r"dimension 3072; the checkpoint's data have 64 × 64 × 3")
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  _one_line_error(run, good, str(tmp_path / "full"), match=r"exists and is not empty")
  with pytest.raises(SystemExit):
    import_reference.main(["import_reference", str(tmp_path / "junk.pt"), "--workdir=" +
                           str(tmp_path / "b")])
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
