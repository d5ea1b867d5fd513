"""Extractors, feature sets and statistics files: sharded = unsharded, logits from the same pass,
8-bit quantisation, stats files round-trip (and pytorch-fid's load), the reference from a file
equals the one computed on the fly, folder and translation references."""

import numpy as np
import pytest

from fdrl_jax import bundled, datasets, feature_stats, features, inception, parallel, scores
from helpers import cat2dog_folders, tiny_cat2dog_config, tiny_digits_config


def _one_line_error(fn, *args, match, **kwargs):
  with pytest.raises(ValueError, match=match) as info:
    fn(*args, **kwargs)
  assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def judge():
  return features.digits_classifier(seed=0)


@pytest.fixture(scope="module")
def digits():
  return bundled.digits_split(0)[2]  # the 297 held-out digits


def test_classifier_outputs_are_its_features_and_logits(judge, digits):
  feats, logits = features.classifier_outputs(judge, digits[:50])
  np.testing.assert_allclose(feats, judge.features(digits[:50]), rtol=1e-5, atol=1e-5)
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(probabilities, judge.probabilities(digits[:50]), rtol=1e-4,
                             atol=1e-5)
  extractor = features.extractor(tiny_digits_config(), None)
  assert extractor.name == "digits" and extractor.logits(digits[:3]).shape == (3, 10)
  raw = features.extractor(_toy_config(), None)
  assert raw.name == "raw" and raw.logits is None
  assert raw.features(np.ones((4, 2), np.float32)).dtype == np.float64
  config = tiny_digits_config()
  config.eval.metric = "fdd"
  _one_line_error(features.extractor, config, None,
                  match=r"Unknown --config.eval.metric='fdd' \(did you mean 'fid'")


def _toy_config():
  from configs import toy2d
  return toy2d.get_config("8gaussians")


def test_sharded_feature_set_equals_one_device(judge, digits):
  mesh = parallel.data_mesh()
  assert mesh.devices.size == 4  # tests/conftest.py's fake CPU devices
  sets = []
  for m in (None, mesh):
    accumulator = features.FeatureAccumulator(features.classifier_extractor("digits", judge,
                                                                            mesh=m),
                                              keep_features=True, keep_logits=True)
    for start in range(0, len(digits), 101):  # 101 rows: not a multiple of the 4 devices
      accumulator.add(digits[start:start + 101])
    sets.append(accumulator.result())
  one, four = sets
  assert one.count == four.count == len(digits) and four.features.shape == (297, 128)
  np.testing.assert_allclose(four.features, one.features, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(four.logits, one.logits, rtol=1e-5, atol=1e-5)
  fd_one = scores.frechet_distance(one.mu, one.sigma, *scores.feature_statistics(
      judge.features(bundled.digits_split(0)[0])))
  fd_four = scores.frechet_distance(four.mu, four.sigma, *scores.feature_statistics(
      judge.features(bundled.digits_split(0)[0])))
  np.testing.assert_allclose(fd_four, fd_one, rtol=1e-5)
  np.testing.assert_allclose(one.mu, scores.feature_statistics(one.features)[0], rtol=1e-6,
                             atol=1e-6)


def test_accumulator_keeps_rows_only_when_asked_and_quantizes(judge, digits):
  extractor = features.classifier_extractor("digits", judge)
  plain = features.FeatureAccumulator(extractor)
  plain.add(digits[:20])
  result = plain.result()
  assert result.features is None and result.logits is None and result.count == 20
  x = np.linspace(-1, 1, 11, dtype=np.float32)
  q = features.quantize_images(x)
  np.testing.assert_allclose(q, np.round((x + 1) * 127.5) / 127.5 - 1, atol=1e-7)
  assert q[0] == -1 and q[-1] == 1 and np.all(np.abs(q - x) <= 0.5 / 127.5 + 1e-7)
  quantized = features.FeatureAccumulator(extractor, keep_features=True, quantize=True)
  quantized.add(digits[:20])
  np.testing.assert_allclose(quantized.result().features,
                             judge.features(features.quantize_images(digits[:20])), rtol=1e-5,
                             atol=1e-5)
  _one_line_error(features.FeatureAccumulator, features.raw_extractor(), keep_logits=True,
                  match="raw features have no class logits")


def test_stats_file_round_trips_and_reads_pytorch_fid_files(tmp_path):
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(30, 4))
  fs = features.FeatureSet(*scores.feature_statistics(rows), 30, rows.astype(np.float32), None)
  path = str(tmp_path / "s.npz")
  feature_stats.save_stats(path, fs, extractor="digits", quantize=True, data="digits")
  loaded, meta = feature_stats.load_stats(path)
  assert meta == {"extractor": "digits", "quantize": True, "data": "digits"}
  np.testing.assert_array_equal(loaded.mu, fs.mu)
  np.testing.assert_array_equal(loaded.sigma, fs.sigma)
  np.testing.assert_array_equal(loaded.features, fs.features)
  assert loaded.count == 30 and loaded.logits is None
  _one_line_error(feature_stats.save_stats, path, fs, extractor="digits", quantize=True,
                  data="digits", match="exists; choose a new file")
  np.savez(tmp_path / "pytorch_fid.npz", mu=fs.mu, sigma=fs.sigma)  # pytorch-fid's / clean-fid's
  foreign, meta = feature_stats.load_stats(str(tmp_path / "pytorch_fid.npz"))
  assert meta == {"extractor": None, "quantize": None, "data": None}
  assert foreign.features is None and foreign.count == 0
  np.testing.assert_array_equal(foreign.sigma, fs.sigma)
  check = feature_stats.check_stats
  check("f", foreign, meta, extractor="inception", quantize=False, keep_features=False)
  _one_line_error(check, "f", foreign, meta, extractor="inception", quantize=False,
                  keep_features=True, match="no feature rows.*--mode=stats")
  _one_line_error(check, "f", foreign, meta, extractor="digits", quantize=False,
                  keep_features=False, match="holds inception features; .* digits'")
  _one_line_error(check, "f", loaded, {"extractor": "digits", "quantize": True, "data": "d"},
                  extractor="digits", quantize=False, keep_features=False,
                  match="computed with quantize=True")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  _one_line_error(feature_stats.load_stats, str(tmp_path / "junk.npz"), match="not an .npz")
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  _one_line_error(feature_stats.load_stats, str(tmp_path / "other.npz"),
                  match="no mu and sigma.*found x")
  _one_line_error(feature_stats.load_stats, str(tmp_path / "none.npz"),
                  match="does not exist; compute one with --mode=stats")


def test_reference_from_a_stats_file_equals_the_one_computed(tmp_path):
  config = tiny_digits_config()
  dataset = datasets.build_dataset(config)
  extractor = features.extractor(config, dataset)
  keep = dict(translation=False, keep_features=True, keep_logits=False, quantize=False)
  computed = feature_stats.reference_set(config, dataset, str(tmp_path), extractor=extractor,
                                         **keep)
  assert computed.count == len(dataset.test)  # the digit classifiers' reference: held-out images
  path = feature_stats.stats_to_file(config, str(tmp_path / "digits.npz"))
  config.eval.reference_stats = path
  from_file = feature_stats.reference_set(config, dataset, str(tmp_path), extractor=extractor,
                                          **keep)
  samples = features.FeatureAccumulator(extractor)
  samples.add(dataset.train[:200])
  s = samples.result()
  np.testing.assert_allclose(scores.frechet_distance(s.mu, s.sigma, from_file.mu, from_file.sigma),
                             scores.frechet_distance(s.mu, s.sigma, computed.mu, computed.sigma),
                             rtol=1e-5)
  np.testing.assert_allclose(from_file.features, computed.features, rtol=1e-5, atol=1e-5)
  _one_line_error(feature_stats.reference_set, config, dataset, str(tmp_path),
                  extractor=extractor, **{**keep, "quantize": True},
                  match="computed with quantize=False")


@pytest.fixture(scope="module")
def tiny_inception():
  """Random Inception variables (as tests/test_inception.py draws them), at 75 x 75 unresized."""
  rng = np.random.default_rng(0)
  out = {}
  for _, (collection, names, spec) in inception.expected_shapes().items():
    scale = np.sqrt(2.0 / np.prod(spec.shape[:3])) if names[-1] == "kernel" else 0.1
    value = (rng.uniform(0.5, 1.5, spec.shape) if names[-1] in ("scale", "var")
             else rng.normal(0.0, scale, spec.shape))
    node = out.setdefault(collection, {})
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = np.asarray(value, np.float32)
  return out


def test_folder_and_two_folder_translation_references(tmp_path, tiny_inception, monkeypatch):
  root = cat2dog_folders(tmp_path, count=3)
  config = tiny_cat2dog_config(root)
  config.data.image_size = 75
  config.eval.metric = "fid"
  monkeypatch.setitem(features.EXTRACTORS, "fid", lambda c, mesh: features.inception_extractor(
      tiny_inception, mesh=mesh, batch_size=4, resize_input=False))
  dataset = datasets.build_dataset(config)
  extractor = features.extractor(config, dataset)
  keep = dict(keep_features=True, keep_logits=True, quantize=False)
  # the translation's reference: the held-out target images (testB), cached in the workdir
  reference = feature_stats.reference_set(config, dataset, str(tmp_path), extractor=extractor,
                                          translation=True, **keep)
  assert reference.count == 3 and reference.logits.shape == (3, 1008)
  direct = features.inception_extractor(tiny_inception, batch_size=4, resize_input=False)
  np.testing.assert_allclose(reference.features, direct.features(dataset.test), rtol=1e-5,
                             atol=1e-5)
  assert (tmp_path / "fid_stats_folder_test.npz").exists()
  again = feature_stats.reference_set(config, dataset, str(tmp_path), extractor=extractor,
                                      translation=True, **keep)
  np.testing.assert_array_equal(again.sigma, reference.sigma)
  # a folder generation run's reference: num_reference training images (trainB)
  config.eval.num_reference = 3
  generation = feature_stats.reference_set(config, dataset, str(tmp_path), extractor=extractor,
                                           translation=False, **keep)
  assert generation.count == 3 and (tmp_path / "fid_stats_folder_3.npz").exists()
  config.eval.num_reference = 4
  _one_line_error(feature_stats.reference_set, config, dataset, str(tmp_path),
                  extractor=extractor, translation=False, **keep,
                  match="cannot be computed from 4 training images: the split has 3")
