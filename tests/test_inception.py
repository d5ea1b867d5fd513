"""The FID InceptionV3: shapes, resizing, pooling semantics, weight files and parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import inception


@pytest.fixture(scope="module")
def variables():
  """Random variables with the structure of ``model.init`` (from ``jax.eval_shape``).

  A compiled ``model.init`` takes 20-40 s on a 2-core CPU (XLA compiles 94 truncated-normal
  initialisers), so the random values are drawn with numpy: He-scaled kernels and perturbed
  BatchNorm statistics.
  """
  rng = np.random.default_rng(0)
  out = {}
  for key, (collection, names, spec) in inception.expected_shapes().items():
    if names[-1] == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(spec.shape[:3])), spec.shape)
    else:
      value = rng.uniform(0.5, 1.5, spec.shape) if names[-1] in ("scale", "var") else (
          rng.normal(0.0, 0.1, spec.shape))
    node = out.setdefault(collection, {})
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = jnp.asarray(value, spec.dtype)
  return out


def test_init_structure_matches_expected_table():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.key(0), x)
  table = inception.expected_shapes()
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  assert len(flat) == len(table)
  for path, spec in flat:
    assert table["/".join(p.key for p in path[1:])][2].shape == spec.shape


@pytest.fixture(scope="module")
def weights_file(variables, tmp_path_factory):
  """An ``.npz`` written by ``save_weights``."""
  path = tmp_path_factory.mktemp("inception") / "weights.npz"
  inception.save_weights(variables, str(path))
  return path


def _rewrite(path, out, edit):
  """Copies an ``.npz``, applying ``edit`` to its dict of arrays."""
  with np.load(path) as data:
    arrays = {key: data[key] for key in data.files}
  edit(arrays)
  np.savez(out, **arrays)
  return str(out)


def test_features_shape_at_299_and_resized_32(variables):
  x299 = jax.random.uniform(jax.random.key(1), (2, 299, 299, 3), minval=-1.0, maxval=1.0)
  out = jax.jit(inception.InceptionV3().apply)(variables, x299)
  assert out.shape == (2, inception.FEATURE_DIM) and np.isfinite(out).all()
  x32 = np.asarray(jax.random.uniform(jax.random.key(2), (3, 32, 32, 3), minval=-1.0, maxval=1.0))
  feats = inception.features(variables, x32, batch_size=2)
  assert feats.shape == (3, inception.FEATURE_DIM) and feats.dtype == np.float64
  resized = inception.resize_to_input_size(jnp.asarray(x32[:2]))
  ref = jax.jit(inception.InceptionV3().apply)(variables, resized)
  np.testing.assert_allclose(feats[:2], ref, rtol=1e-4, atol=1e-6)


def test_resize_matches_torch_bilinear_align_corners_false():
  # F.interpolate([0, 1], size=4, mode="bilinear", align_corners=False) = [0, .25, .75, 1].
  x = jnp.broadcast_to(jnp.array([0.0, 1.0])[None, None, :, None], (1, 2, 2, 1))
  out = jax.image.resize(x, (1, 4, 4, 1), "bilinear", antialias=False)
  np.testing.assert_allclose(out[0, 0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
  big = jnp.ones((1, 40, 50, 3))
  assert inception.resize_to_input_size(big).shape == (1, 299, 299, 3)


def test_average_pool_ignores_padding():
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  out = inception._avg_pool_3x3(x)[0, :, :, 0]
  assert out[0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4)
  assert out[1, 1] == pytest.approx(4.0)
  assert inception._max_pool_3x3(x - 100.0)[0, 0, 0, 0] == pytest.approx(4.0 - 100.0)


def test_parameter_count_matches_pytorch_fid():
  table = inception.expected_shapes()
  sizes = {c: sum(int(np.prod(s.shape)) for k, (col, _, s) in table.items() if col == c)
           for c in ("params", "batch_stats")}
  # torchvision inception_v3 (27,161,264) minus fc (2,049,000) and AuxLogits (3,326,696).
  assert sizes["params"] == 27_161_264 - 2_049_000 - 3_326_696 == 21_785_568
  assert sizes["batch_stats"] == 2 * 17_216
  assert sum(key.endswith("/conv/kernel") for key in table) == 94
  assert table["Mixed_7c/branch_pool/conv/kernel"][2].shape == (1, 1, 2048, 192)
  assert table["Mixed_6b/branch7x7_2/conv/kernel"][2].shape == (1, 7, 128, 128)


def test_save_load_round_trip(variables, weights_file):
  loaded = inception.load_weights(str(weights_file))
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_wrong_shape_names_layer(weights_file, tmp_path):
  key = "Mixed_6c/branch7x7_2/conv/kernel"
  def edit(arrays):
    arrays[key] = np.zeros((7, 1, 160, 160), np.float32)
  path = _rewrite(weights_file, tmp_path / "bad.npz", edit)
  with pytest.raises(ValueError, match=r"Mixed_6c/branch7x7_2 .*\(7, 1, 160, 160\).*\(1, 7, 160"):
    inception.load_weights(path)


def test_missing_layer_is_named(weights_file, tmp_path):
  def edit(arrays):
    for key in [k for k in arrays if k.startswith("Mixed_7a/branch3x3_2/")]:
      del arrays[key]
  path = _rewrite(weights_file, tmp_path / "missing.npz", edit)
  with pytest.raises(ValueError, match=r"Mixed_7a/branch3x3_2 is missing"):
    inception.load_weights(path)


def test_unexpected_key_is_rejected(weights_file, tmp_path):
  def edit(arrays):
    arrays["fc/kernel"] = np.zeros((2048, 1008), np.float32)
  path = _rewrite(weights_file, tmp_path / "extra.npz", edit)
  with pytest.raises(ValueError, match="unexpected key fc/kernel"):
    inception.load_weights(path)


@pytest.mark.slow
def test_fid_eval_end_to_end(weights_file, tmp_path):
  """--mode=eval with metric fid on a tiny digits run (random Inception weights): about 2 min."""
  from configs import digits
  from fdrl_jax import run_lib
  config = digits.get_config()
  config.data.batch_size, config.flow.num_steps, config.flow.num_refine_steps = 8, 2, 1
  config.training.num_steps = config.training.checkpoint_every = config.training.sample_every = 2
  config.eval.metric, config.eval.inception_weights = "fid", str(weights_file)
  config.eval.num_samples, config.eval.num_reference = 6, 6
  run_lib.train_and_evaluate(config, str(tmp_path))
  first = run_lib.evaluate_to_file(config, str(tmp_path))
  assert np.isfinite(first["fid"]) and first["fid"] >= 0
  assert (tmp_path / "fid_stats_digits_6.npz").exists()
  second = run_lib.evaluate_to_file(config, str(tmp_path))  # reuses the cached statistics
  assert second["path"] != first["path"]
  config.eval.num_reference = 2000  # the digits' training split has 1 500
  with pytest.raises(ValueError, match="FID statistics of 'digits' cannot be computed.*at most"):
    run_lib.evaluate_to_file(config, str(tmp_path))


@pytest.mark.slow
def test_cat2dog_translation_fid_eval_on_generated_folders(weights_file, tmp_path):
  """Table 3's protocol with FID: translated test cats vs test dogs, beside the untranslated."""
  from fdrl_jax import run_lib
  from test_applications import cat2dog_folders, tiny_cat2dog_config
  config = tiny_cat2dog_config(cat2dog_folders(tmp_path))
  config.eval.inception_weights = str(weights_file)
  run_lib.train_and_evaluate(config, str(tmp_path / "run"))
  result = run_lib.evaluate_to_file(config, str(tmp_path / "run"))
  assert result["num_samples"] == 4 and result["num_reference"] == 4
  assert np.isfinite(result["fid"]) and np.isfinite(result["fid_untranslated"])
  assert "held-out target images" in result["fid_variant"]
