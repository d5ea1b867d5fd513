"""The FID InceptionV3: shapes, resizing, pooling semantics, weight files and their converter,
the Inception Score's logits, and features and their statistics over several devices."""

import collections
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import (convert_inception, features, inception, inception_weights, metric_table,
                      modes, parallel, scores)
from tests import torch_format
from tests.torch_format import FakeStorage, View


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
  shapes = jax.eval_shape(inception.InceptionV3(logits=True).init, jax.random.key(0), x)
  table = inception.expected_shapes()
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  assert len(flat) == len(table)
  for path, spec in flat:
    assert table["/".join(p.key for p in path[1:])][2].shape == spec.shape
  without = jax.eval_shape(inception.InceptionV3().init, jax.random.key(0), x)
  keys = {"/".join(p.key for p in path[1:]) for path, _ in jax.tree_util.tree_flatten_with_path(
      without)[0]}
  assert keys == table.keys() - set(inception.FC_KEYS)


@pytest.fixture(scope="module")
def weights_file(variables, tmp_path_factory):
  """An ``.npz`` written by ``save_weights``."""
  path = tmp_path_factory.mktemp("inception") / "weights.npz"
  inception_weights.save_weights(variables, str(path))
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
  fc = sum(int(np.prod(table[key][2].shape)) for key in inception.FC_KEYS)
  # torchvision inception_v3 (27,161,264) minus fc (2,049,000) and AuxLogits (3,326,696).
  assert sizes["params"] - fc == 27_161_264 - 2_049_000 - 3_326_696 == 21_785_568
  # The TF graph's classifier: 2048 x 1008 + 1008.
  assert fc == 2048 * 1008 + 1008 == 2_065_392 and sizes["params"] == 23_850_960
  assert sizes["batch_stats"] == 2 * 17_216
  assert sum(key.endswith("/conv/kernel") for key in table) == 94
  assert table["Mixed_7c/branch_pool/conv/kernel"][2].shape == (1, 1, 2048, 192)
  assert table["Mixed_6b/branch7x7_2/conv/kernel"][2].shape == (1, 7, 128, 128)


def test_save_load_round_trip(variables, weights_file):
  loaded = inception_weights.load_weights(str(weights_file))
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_wrong_shape_names_layer(weights_file, tmp_path):
  key = "Mixed_6c/branch7x7_2/conv/kernel"
  def edit(arrays):
    arrays[key] = np.zeros((7, 1, 160, 160), np.float32)
  path = _rewrite(weights_file, tmp_path / "bad.npz", edit)
  with pytest.raises(ValueError, match=r"Mixed_6c/branch7x7_2 .*\(7, 1, 160, 160\).*\(1, 7, 160"):
    inception_weights.load_weights(path)


def test_missing_layer_is_named(weights_file, tmp_path):
  def edit(arrays):
    for key in [k for k in arrays if k.startswith("Mixed_7a/branch3x3_2/")]:
      del arrays[key]
  path = _rewrite(weights_file, tmp_path / "missing.npz", edit)
  with pytest.raises(ValueError, match=r"Mixed_7a/branch3x3_2 is missing"):
    inception_weights.load_weights(path)


def test_unexpected_key_is_rejected(weights_file, tmp_path):
  def edit(arrays):
    arrays["AuxLogits/fc/kernel"] = np.zeros((768, 1000), np.float32)
  path = _rewrite(weights_file, tmp_path / "extra.npz", edit)
  with pytest.raises(ValueError, match="unexpected key AuxLogits/fc/kernel"):
    inception_weights.load_weights(path)


def test_half_a_classifier_is_named(weights_file, tmp_path):
  path = _rewrite(weights_file, tmp_path / "half.npz", lambda arrays: arrays.pop("fc/bias"))
  with pytest.raises(ValueError, match=r"layer fc is missing fc/bias, expected shape \(1008,\)"):
    inception_weights.check_weights(path)


def _one_line_error(fn, *args, match):
  """Calls ``fn(*args)``, expecting a one-line ValueError that matches ``match``; returns it."""
  with pytest.raises(ValueError, match=match) as info:
    fn(*args)
  assert "\n" not in str(info.value)
  return str(info.value)


def test_foreign_weight_files_are_named_in_one_line(tmp_path):
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not numpy at all\n" * 8)
  for fn in (inception_weights.check_weights, inception_weights.load_weights):
    message = _one_line_error(fn, str(junk), match=r"junk.npz is not an .npz of the FID Incep")
    assert "allow_pickle" not in message and "convert_inception" in message
  np.save(tmp_path / "one.npy", np.zeros(3))
  _one_line_error(inception_weights.load_weights, str(tmp_path / "one.npy"), match="a single .npy array")
  np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
  _one_line_error(inception_weights.load_weights, str(tmp_path / "stats.npz"),
                  match=r"none of its arrays \(mu, sigma\) is a layer")
  np.savez(tmp_path / "objects.npz", x=np.array([{}, None], dtype=object))
  _one_line_error(inception_weights.load_weights, str(tmp_path / "objects.npz"), match="x holds object")
  with zipfile.ZipFile(tmp_path / "model.pth", "w") as archive:
    archive.writestr("archive/data.pkl", b"")
  _one_line_error(inception_weights.load_weights, str(tmp_path / "model.pth"),
                  match=r"model.pth is a PyTorch file.*convert_inception .*model.pth OUT.npz")
  (tmp_path / "old.pth").write_bytes(pickle.dumps({"fc.bias": 0}, protocol=2))
  _one_line_error(inception_weights.check_weights, str(tmp_path / "old.pth"),
                  match=r"old.pth is a PyTorch file or a pickle.*convert_inception .*old.pth")
  _one_line_error(inception_weights.load_weights, str(tmp_path / "none.npz"),
                  match=r"the file .*none.npz does not exist; .*convert_inception "
                        r"pt_inception-2015-12-05-6726825d.pth .*none.npz")
  _one_line_error(inception_weights.check_weights, str(tmp_path), match="cannot read .*Is a directory")


def test_check_metric_tells_unset_missing_and_foreign_weights_apart(weights_file, tmp_path):
  from configs import digits
  config = digits.get_config()
  config.eval.metric, config.eval.inception_weights = "fid", ""
  _one_line_error(metric_table.check_metric, config,
                  match=r"FID needs --config.eval.inception_weights=FILE.npz.*convert_inception")
  config.eval.inception_weights = str(tmp_path / "missing.npz")
  _one_line_error(metric_table.check_metric, config,
                  match=r"^--config.eval.inception_weights: the file .*missing.npz does not exist")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  config.eval.inception_weights = str(tmp_path / "junk.npz")
  _one_line_error(metric_table.check_metric, config, match=r"junk.npz is not an .npz of the FID")
  config.eval.inception_weights = str(tmp_path)
  _one_line_error(metric_table.check_metric, config, match="cannot read")
  config.eval.inception_weights = str(weights_file)
  metric_table.check_metric(config)


# Logits, old weight files, several devices. 75 x 75 is the smallest input the network takes
# unresized; each new (batch shape, logits, sharding) compiles the network once, ~6-8 s here.

@pytest.fixture(scope="module")
def small_images():
  return np.random.default_rng(3).uniform(-1.0, 1.0, (5, 75, 75, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def plain_features(variables, small_images):
  """Unsharded pool3 features, batches of 3 (as before logits and meshes existed)."""
  return inception.features(variables, small_images, 3, resize_input=False)


def test_logits_are_pool3_times_fc_kernel_without_bias(variables, small_images, plain_features):
  feats, logits = inception.features(variables, small_images, 3, resize_input=False, logits=True)
  assert logits.shape == (5, inception.NUM_CLASSES) and logits.dtype == np.float64
  np.testing.assert_array_equal(feats, plain_features)
  kernel = np.asarray(variables["params"]["fc"]["kernel"], np.float64)
  assert np.abs(np.asarray(variables["params"]["fc"]["bias"])).max() > 0.01  # the bias is left out
  np.testing.assert_allclose(logits, feats @ kernel, rtol=1e-5, atol=1e-5 * np.abs(logits).max())
  empty = inception.features(variables, small_images[:0], 3, resize_input=False, logits=True)
  assert empty[0].shape == (0, 2048) and empty[1].shape == (0, 1008)


def test_weights_without_fc_give_the_same_features(variables, weights_file, tmp_path,
                                                   small_images, plain_features):
  old = _rewrite(weights_file, tmp_path / "old.npz",
                 lambda arrays: [arrays.pop(key) for key in inception.FC_KEYS])
  inception_weights.check_weights(old)
  loaded = inception_weights.load_weights(old)
  assert "fc" not in loaded["params"]
  assert "fc" in inception_weights.load_weights(str(weights_file))["params"]
  np.testing.assert_array_equal(inception.features(loaded, small_images, 3, resize_input=False),
                                plain_features)
  for fn in (inception_weights.check_weights, inception_weights.load_weights):
    _one_line_error(lambda path: fn(path, logits=True), old,
                    match=r"the weights in .*old.npz have no classifier fc .*convert pytorch-fid's "
                          r"weights again with: python -m fdrl_jax.convert_inception")
  _one_line_error(lambda v: inception.features(v, small_images, 3, False, logits=True), loaded,
                  match=r"these FID Inception weights have no classifier fc .*convert_inception")


def test_sharded_features_equal_unsharded(variables, small_images, plain_features):
  mesh = parallel.data_mesh()
  assert mesh.devices.size == 4  # tests/conftest.py's fake CPU devices
  feats, logits = inception.features(variables, small_images, 3, resize_input=False,
                                     logits=True, mesh=mesh)  # 3 -> padded to 4 per batch
  _, plain_logits = inception.features(variables, small_images, 3, resize_input=False,
                                       logits=True)
  assert feats.shape == plain_features.shape and feats.dtype == np.float64
  np.testing.assert_allclose(feats, plain_features, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, plain_logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())
  accumulator = features.FeatureAccumulator(
      features.inception_extractor(variables, mesh=mesh, batch_size=3, resize_input=False))
  for part in (small_images[:4], small_images[4:]):
    accumulator.add(part)
  mu, sigma = accumulator.result()[:2]
  want_mu, want_sigma = scores.feature_statistics(plain_features)
  np.testing.assert_allclose(mu, want_mu, rtol=1e-6, atol=1e-6 * np.abs(want_mu).max())
  np.testing.assert_allclose(sigma, want_sigma, rtol=1e-6, atol=1e-6 * np.abs(want_sigma).max())


# torch.save files, written here without torch (tests/torch_format.py).

def _torch_save(path, entries, legacy=False):
  """Writes ``{name: (FakeStorage, offset, size, stride)}`` as ``torch.save`` does a state_dict."""
  state = collections.OrderedDict((name, View(*entry)) for name, entry in entries.items())
  return torch_format.torch_save(path, state, legacy, archive="pt_inception")


def _contiguous(state):
  """Entries for :func:`_torch_save`: each array in a storage of its own, C-contiguous."""
  entries = {}
  for i, (name, value) in enumerate(state.items()):
    value = np.array(value, "<f4" if value.dtype.kind == "f" else "<i8", order="C")
    strides = tuple(s // value.itemsize for s in value.strides)
    kind = "FloatStorage" if value.dtype.kind == "f" else "LongStorage"
    entries[name] = (FakeStorage(str(i), kind, value.ravel()), 0, value.shape, strides)
  return entries


def _pytorch_fid_state(weights_file):
  """The state_dict that pytorch-fid's file would hold for an ``.npz`` of weights (the inverse of
  the module docstring's mapping, written independently of the converter), with the BatchNorm
  counters that the converter drops."""
  leaves = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}
  state = {}
  with np.load(weights_file) as data:
    for key in data.files:
      if key.startswith("fc/"):  # the classifier: Linear's weight is (out, in)
        state[f"fc.{leaves[key[3:]]}"] = data[key].T if key == "fc/kernel" else data[key]
        continue
      layer, module, leaf = key.rsplit("/", 2)
      value = data[key].transpose(3, 2, 0, 1) if leaf == "kernel" else data[key]
      state[f"{layer.replace('/', '.')}.{module}.{leaves[leaf]}"] = value
      if leaf == "var":
        state[f"{layer.replace('/', '.')}.bn.num_batches_tracked"] = np.array(7, np.int64)
  return state


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_convert_torch_save_file_without_torch(weights_file, tmp_path, legacy):
  source = _torch_save(tmp_path / "pt.pth", _contiguous(_pytorch_fid_state(weights_file)), legacy)
  out = str(tmp_path / "converted.npz")
  assert convert_inception.convert(source, out) == len(inception.expected_shapes())
  with np.load(out) as got, np.load(weights_file) as want:
    assert sorted(got.files) == sorted(want.files)
    for key in want.files:
      assert got[key].dtype == np.float32
      np.testing.assert_array_equal(got[key], want[key])
  _one_line_error(convert_inception.convert, source, out, match="converted.npz already exists")


def test_convert_keeps_fc_and_converts_a_source_without_it(weights_file, tmp_path):
  state = _pytorch_fid_state(weights_file)
  assert state["fc.weight"].shape == (1008, 2048)
  source = _torch_save(tmp_path / "pt.pth", _contiguous(state))
  out = str(tmp_path / "with_fc.npz")
  convert_inception.convert(source, out)
  with np.load(out) as got, np.load(weights_file) as want:
    assert got["fc/kernel"].shape == (2048, 1008) and got["fc/bias"].shape == (1008,)
    np.testing.assert_array_equal(got["fc/kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(got["fc/bias"], want["fc/bias"])
  inception_weights.check_weights(out, logits=True)
  no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
  source = _torch_save(tmp_path / "no_fc.pth", _contiguous(no_fc))
  out = str(tmp_path / "without_fc.npz")
  assert convert_inception.convert(source, out) == len(inception.expected_shapes()) - 2
  with np.load(out) as got:
    assert not any(key.startswith("fc/") for key in got.files)


def test_reader_rebuilds_offsets_strides_and_integers(tmp_path):
  floats = FakeStorage("0", "FloatStorage", np.arange(12, dtype="<f4"))
  longs = FakeStorage("1", "LongStorage", np.array([7, 9], "<i8"))
  entries = {"view": (floats, 2, (2, 3), (1, 2)), "every_third": (floats, 0, (4,), (3,)),
             "count": (longs, 1, (), ())}
  for legacy in (False, True):
    state = convert_inception.read_state_dict(_torch_save(tmp_path / "s.pth", entries, legacy))
    assert list(state) == ["view", "every_third", "count"]
    np.testing.assert_array_equal(state["view"], [[2, 4, 6], [3, 5, 7]])
    np.testing.assert_array_equal(state["every_third"], [0, 3, 6, 9])
    assert state["count"].shape == () and state["count"].dtype == np.int64 and state["count"] == 9
    (tmp_path / "s.pth").unlink()


def test_converter_errors_are_one_line(tmp_path):
  read = convert_inception.read_state_dict
  (tmp_path / "junk.pth").write_bytes(b"junk" * 10)
  _one_line_error(read, str(tmp_path / "junk.pth"), match="junk.pth is not a readable torch.save "
                  "file: it is neither a zip archive nor a stream of pickles")
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
    archive.writestr("readme.txt", "hello")
  _one_line_error(read, str(tmp_path / "other.zip"), match=r"not a torch.save file \(no <archive>")
  (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + b"\0" * 40)
  _one_line_error(read, str(tmp_path / "cut.pth"), match="its zip archive is damaged")
  _one_line_error(read, str(tmp_path / "absent.pth"),
                  match="absent.pth does not exist; download pytorch-fid's pt_inception-2015")
  marker = tmp_path / "ran"
  with zipfile.ZipFile(tmp_path / "evil.pth", "w") as archive:  # would create `marker` if run
    archive.writestr("a/data.pkl", _reduce_pickle(os.mkdir, str(marker)))
  _one_line_error(read, str(tmp_path / "evil.pth"),
                  match=r"evil.pth holds a pickled (os|posix).mkdir, not a state_dict")
  assert not marker.exists()
  short = FakeStorage("0", "FloatStorage", np.zeros(4, "<f4"))
  path = _torch_save(tmp_path / "short.pth", {"w": (short, 0, (4,), (1,))})
  with zipfile.ZipFile(path, "a") as archive:  # a second, shorter copy of the storage wins
    with pytest.warns(UserWarning, match="Duplicate name"):
      archive.writestr("pt_inception/data/0", b"\0" * 12)
  _one_line_error(read, path, match="storage 0 has 12 bytes, expected 16")
  past = {"w": (FakeStorage("0", "FloatStorage", np.zeros(4, "<f4")), 2, (3,), (1,))}
  _one_line_error(read, _torch_save(tmp_path / "past.pth", past),
                  match=r"a tensor of shape \(3,\) reaches outside its storage 0")


def _reduce_pickle(fn, arg):
  """A protocol-2 pickle that calls ``fn(arg)`` when loaded by an unrestricted unpickler."""
  class Call:
    def __reduce__(self):
      return fn, (arg,)
  return pickle.dumps(Call(), protocol=2)


def test_name_mapping_errors_name_the_state_dict_entry(weights_file):
  state = _pytorch_fid_state(weights_file)
  to_npz = convert_inception.to_npz_arrays
  assert convert_inception.npz_key("Mixed_7c.branch3x3dbl_3a.bn.running_var") == (
      "Mixed_7c/branch3x3dbl_3a/bn/var")
  assert convert_inception.npz_key("Mixed_5b.branch1x1.bn.num_batches_tracked") is None
  assert convert_inception.torch_name("Mixed_6b/branch7x7_2/conv/kernel") == (
      "Mixed_6b.branch7x7_2.conv.weight")
  assert convert_inception.npz_key("fc.weight") == "fc/kernel"
  assert convert_inception.torch_name("fc/bias") == "fc.bias"
  arrays = to_npz(state, "pt.pth")
  np.testing.assert_array_equal(arrays["Conv2d_1a_3x3/conv/kernel"],
                                state["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
  _one_line_error(to_npz, {k: v for k, v in state.items() if k != "Mixed_7a.branch3x3_2.bn.bias"},
                  "pt.pth", match=r"pt.pth: the state_dict lacks Mixed_7a.branch3x3_2.bn.bias "
                                  r"\(1 of the FID Inception's 472 arrays")
  no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
  _one_line_error(to_npz, {k: v for k, v in no_fc.items() if k != "Mixed_7a.branch3x3_2.bn.bias"},
                  "pt.pth", match=r"lacks Mixed_7a.branch3x3_2.bn.bias \(1 of the FID "
                                  r"Inception's 470 arrays")
  _one_line_error(to_npz, {k: v for k, v in state.items() if k != "fc.bias"}, "pt.pth",
                  match=r"pt.pth: the state_dict lacks fc.bias \(1 of the FID Inception's 472")
  _one_line_error(to_npz, {**state, "fc.weight": state["fc.weight"].T}, "pt.pth",
                  match=r"fc.weight has shape \(2048, 1008\), the FID Inception's is "
                        r"\(1008, 2048\)")
  _one_line_error(to_npz, {**state, "AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1))},
                  "pt.pth", match="AuxLogits.conv0.conv.weight is not part of the FID Inception")
  _one_line_error(to_npz, {**state, "Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 2))},
                  "pt.pth", match=r"Conv2d_1a_3x3.conv.weight has shape \(32, 3, 3, 2\), the FID "
                                  r"Inception's is \(32, 3, 3, 3\)")


def test_command_line_reports_errors_in_one_line(tmp_path, capsys):
  for argv in (["convert_inception"], ["convert_inception", str(tmp_path / "no.pth"), "o.npz"]):
    with pytest.raises(SystemExit) as info:
      convert_inception.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
  assert not (tmp_path / "o.npz").exists()


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
  config.eval.metrics = "fid,kid,pr"
  run_lib.train_and_evaluate(config, str(tmp_path))
  first = modes.evaluate_to_file(config, str(tmp_path))
  (row,) = first["rows"]
  assert np.isfinite(row["fid"]) and row["fid"] >= 0 and np.isfinite(row["kid"])
  assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
  assert (tmp_path / "fid_stats_digits_6.npz").exists()
  second = modes.evaluate_to_file(config, str(tmp_path))  # reuses the cached statistics
  assert second["path"] != first["path"]
  config.eval.num_reference = 2000  # the digits' training split has 1 500
  with pytest.raises(ValueError, match="FID statistics of 'digits' cannot be computed.*at most"):
    modes.evaluate_to_file(config, str(tmp_path))


@pytest.mark.slow
def test_tfds_preset_run_scores_fid_kid_pr(weights_file, tmp_path):
  """--mode=eval of a run on a tfds preset (CIFAR10's, on tfds' mock data) with FID, KID and
  precision/recall: the reference statistics come from the run's own tfds training split."""
  import tensorflow_datasets as tfds

  from configs import cifar10
  from fdrl_jax import run_lib
  from helpers import tiny_digits_config
  config = tiny_digits_config(2, cifar10.get_config())
  config.data.batch_size, config.data.max_fit_samples, config.prior.rank = 4, 8, 4
  config.model.name = "conv"  # the paper's ResNet is exercised by test_configs; keep this light
  config.eval.inception_weights, config.eval.metrics = str(weights_file), "fid,kid,pr"
  config.eval.num_samples, config.eval.num_reference = 6, 6
  with tfds.testing.mock_data(num_examples=8):
    run_lib.train_and_evaluate(config, str(tmp_path))
    result = modes.evaluate_to_file(config, str(tmp_path))
  (row,) = result["rows"]
  assert result["num_samples"] == 6 and result["num_reference"] == 6
  assert all(np.isfinite(row[k]) for k in ("fid", "fid_prior", "kid", "kid_prior"))
  assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
  assert (tmp_path / "fid_stats_cifar10_6.npz").exists()


@pytest.mark.slow
def test_cat2dog_translation_fid_eval_on_generated_folders(weights_file, tmp_path):
  """Table 3's protocol with FID: translated test cats vs test dogs, beside the untranslated."""
  from fdrl_jax import run_lib
  from helpers import cat2dog_folders, tiny_cat2dog_config
  config = tiny_cat2dog_config(cat2dog_folders(tmp_path))
  config.eval.inception_weights, config.eval.metrics = str(weights_file), "fid,kid,pr"
  run_lib.train_and_evaluate(config, str(tmp_path / "run"))
  result = modes.evaluate_to_file(config, str(tmp_path / "run"))
  assert result["num_samples"] == 4 and result["num_reference"] == 4
  (row,) = result["rows"]  # the untranslated sources are the empirical prior's draws
  assert np.isfinite(row["fid"]) and np.isfinite(row["fid_prior"])
  assert np.isfinite(row["kid"]) and np.isfinite(row["kid_prior"])
  assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
  assert "held-out target images" in result["fid_variant"]
