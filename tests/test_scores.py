"""KID, Inception Score and improved precision/recall against direct loop computations; streamed
feature moments against whole-set statistics."""


import numpy as np
import pytest

from fdrl_jax import scores


def _direct_mmd2(a, b):
  """The unbiased MMD² with KID's kernel, by explicit sums over pairs."""
  k = lambda u, v: (np.dot(u, v) / len(u) + 1.0) ** 3
  m = len(a)
  within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(m) for j in range(m) if i != j)
  across = sum(k(a[i], b[j]) for i in range(m) for j in range(m))
  return within / (m * (m - 1)) - 2 * across / m ** 2


def test_kid_equals_the_direct_unbiased_mmd_on_the_same_subsets():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(30, 5)), rng.normal(0.5, 1.0, size=(25, 5))
  mean, std = scores.kernel_inception_distance(x, y, num_subsets=4, subset_size=12, seed=3)
  pick = np.random.default_rng(3)
  direct = []
  for _ in range(4):
    a, b = x[pick.choice(30, 12, replace=False)], y[pick.choice(25, 12, replace=False)]
    direct.append(_direct_mmd2(a, b))
  np.testing.assert_allclose([mean, std], [np.mean(direct), np.std(direct)], rtol=1e-10)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
  rng = np.random.default_rng(1)
  same = scores.kernel_inception_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)),
                                          num_subsets=20, subset_size=100)
  apart = scores.kernel_inception_distance(rng.normal(size=(400, 8)),
                                           rng.normal(1.0, 1.0, size=(400, 8)),
                                           num_subsets=20, subset_size=100)
  assert abs(same[0]) < 3 * same[1] + 1e-3
  assert apart[0] > 10 * apart[1] > 0


def test_inception_score_equals_the_direct_kl_formula():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(40, 7)) * 3
  mean, std = scores.inception_score(logits, splits=4)
  direct = []
  for part in np.array_split(logits, 4):
    p = np.exp(part) / np.exp(part).sum(1, keepdims=True)
    marginal = p.mean(0)
    kl = [sum(pi[c] * np.log(pi[c] / marginal[c]) for c in range(7)) for pi in p]
    direct.append(np.exp(np.mean(kl)))
  np.testing.assert_allclose([mean, std], [np.mean(direct), np.std(direct)], rtol=1e-10)


def test_inception_score_bounds():
  """One confident class per sample, classes balanced: IS = number of classes; all samples alike:
  IS = 1."""
  logits = np.where(np.eye(5)[np.arange(50) % 5] > 0, 50.0, 0.0)
  assert scores.inception_score(logits, splits=5)[0] == pytest.approx(5.0, rel=1e-6)
  assert scores.inception_score(np.tile(logits[:1], (50, 1)), splits=5)[0] == pytest.approx(1.0)


def _direct_pr(x, y, k):
  dist = lambda u, v: np.sqrt(np.sum((u - v) ** 2))
  def radius(s, i):
    return sorted(dist(s[i], s[j]) for j in range(len(s)) if j != i)[k - 1]
  ry, rx = [radius(y, i) for i in range(len(y))], [radius(x, i) for i in range(len(x))]
  precision = np.mean([any(dist(g, y[j]) <= ry[j] for j in range(len(y))) for g in x])
  recall = np.mean([any(dist(r, x[j]) <= rx[j] for j in range(len(x))) for r in y])
  return precision, recall


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_equals_the_direct_nearest_neighbour_balls(k):
  rng = np.random.default_rng(4)
  x = rng.normal(0.3, 1.3, size=(35, 3))
  y = rng.normal(size=(28, 3))
  got = scores.precision_recall(x, y, k=k, chunk=8)
  np.testing.assert_allclose(got, _direct_pr(x, y, k))


def test_precision_recall_see_mode_dropping_and_off_manifold_samples():
  rng = np.random.default_rng(5)
  reference = rng.normal(size=(300, 2))
  half = reference[reference[:, 0] > 0] + 0.01 * rng.normal(size=(1, 2))  # one mode dropped
  p, r = scores.precision_recall(half, reference)
  assert p > 0.9 and r < 0.7
  far = rng.normal(size=(300, 2)) + 10.0
  assert scores.precision_recall(far, reference) == (0.0, 0.0)


def test_scores_refuse_too_few_rows():
  with pytest.raises(ValueError, match="at least 2"):
    scores.kernel_inception_distance(np.zeros((1, 3)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="more than 3"):
    scores.precision_recall(np.zeros((3, 3)), np.zeros((5, 3)))


def test_moments_give_feature_statistics():
  rng = np.random.default_rng(4)
  batches = [rng.normal(5.0, 1.0, (n, 6)) * rng.uniform(0.5, 2.0, 6) for n in (7, 5, 8)]
  whole = np.concatenate(batches)
  moments = scores.Moments()
  for b in batches:
    moments = scores.add_moments(moments, b)
  assert moments.count == 20
  np.testing.assert_allclose(moments.shift, batches[0].mean(0), rtol=1e-12)
  mu, sigma = scores.moments_statistics(moments)
  np.testing.assert_allclose(mu, whole.mean(0), rtol=1e-10)
  np.testing.assert_allclose(sigma, np.cov(whole, rowvar=False), rtol=1e-10,
                             atol=1e-10 * np.abs(sigma).max())
  with pytest.raises(ValueError, match="N >= 2, got N = 1") as info:
    scores.moments_statistics(scores.add_moments(scores.Moments(), whole[:1]))
  assert "\n" not in str(info.value)
