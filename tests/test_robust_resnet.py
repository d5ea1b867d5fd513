"""robustness's CIFAR ResNets: checkpoints built here by hand in its layout (an AttackerModel under
DataParallel, saved with dill's globals), written without torch, imported as classifier workdirs
and compared with a NumPy forward pass (NCHW, batch norm in inference mode)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import classifier, import_reference, robust_resnet, torch_files
from helpers import conv_nchw
from tests import torch_format

CIFAR_MEAN, CIFAR_STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2023, 0.1994, 0.2010])
WIDTH = 1 / 16


def _state(rng, bottleneck, blocks):
  """robustness's ResNet state_dict (without ``model.``) at widths (64, ..., 512) × WIDTH."""
  sd = {}

  def conv_bn(conv, bn, o, i, k):
    sd[conv + ".weight"] = rng.normal(0, (i * k * k) ** -0.5, (o, i, k, k)).astype(np.float32)
    sd[bn + ".weight"] = rng.uniform(0.5, 1.5, o).astype(np.float32)
    sd[bn + ".bias"] = rng.normal(0, 0.1, o).astype(np.float32)
    sd[bn + ".running_mean"] = rng.normal(0, 0.1, o).astype(np.float32)
    sd[bn + ".running_var"] = rng.uniform(0.5, 1.5, o).astype(np.float32)
    sd[bn + ".num_batches_tracked"] = np.array(100, np.int64)

  widths = [int(w * WIDTH) for w in (64, 128, 256, 512)]
  conv_bn("conv1", "bn1", widths[0], 3, 3)
  in_planes, expansion = widths[0], 4 if bottleneck else 1
  for s, (planes, n) in enumerate(zip(widths, blocks)):
    for b in range(n):
      p = f"layer{s + 1}.{b}."
      stride = (1 if s == 0 else 2) if b == 0 else 1
      if bottleneck:
        conv_bn(p + "conv1", p + "bn1", planes, in_planes, 1)
        conv_bn(p + "conv2", p + "bn2", planes, planes, 3)
        conv_bn(p + "conv3", p + "bn3", 4 * planes, planes, 1)
      else:
        conv_bn(p + "conv1", p + "bn1", planes, in_planes, 3)
        conv_bn(p + "conv2", p + "bn2", planes, planes, 3)
      if stride != 1 or in_planes != expansion * planes:
        conv_bn(p + "shortcut.0", p + "shortcut.1", expansion * planes, in_planes, 1)
      in_planes = expansion * planes
  sd["linear.weight"] = rng.normal(0, in_planes ** -0.5, (10, in_planes)).astype(np.float32)
  sd["linear.bias"] = rng.normal(0, 0.1, 10).astype(np.float32)
  return sd


def _bn(sd, name, x):
  g, b, m, v = (sd[f"{name}.{k}"][None, :, None, None]
                for k in ("weight", "bias", "running_mean", "running_var"))
  return (x - m) / np.sqrt(v + 1e-5) * g + b


def _forward(sd, x01, bottleneck, blocks):
  """robustness's AttackerModel forward (inference) in NumPy: normalise, ResNet, logits."""
  relu = lambda a: np.maximum(a, 0)
  x = (np.clip(x01, 0, 1) - CIFAR_MEAN[None, :, None, None]) / CIFAR_STD[None, :, None, None]
  out = relu(_bn(sd, "bn1", conv_nchw(x, sd["conv1.weight"], 1, 1)))
  for s, n in enumerate(blocks):
    for b in range(n):
      p = f"layer{s + 1}.{b}."
      stride = (1 if s == 0 else 2) if b == 0 else 1
      if bottleneck:
        h = relu(_bn(sd, p + "bn1", conv_nchw(out, sd[p + "conv1.weight"])))
        h = relu(_bn(sd, p + "bn2", conv_nchw(h, sd[p + "conv2.weight"], stride, 1)))
        h = _bn(sd, p + "bn3", conv_nchw(h, sd[p + "conv3.weight"]))
      else:
        h = relu(_bn(sd, p + "bn1", conv_nchw(out, sd[p + "conv1.weight"], stride, 1)))
        h = _bn(sd, p + "bn2", conv_nchw(h, sd[p + "conv2.weight"], 1, 1))
      short = out
      if p + "shortcut.0.weight" in sd:
        short = _bn(sd, p + "shortcut.1", conv_nchw(out, sd[p + "shortcut.0.weight"], stride))
      out = relu(h + short)
  pooled = out.mean(axis=(2, 3))  # avg_pool2d(out, 4) on the 4×4 map
  return pooled @ sd["linear.weight"].T + sd["linear.bias"]


def _robustness_checkpoint(sd):
  """What robustness's train.py saves (pickle_module=dill), an AttackerModel under DataParallel."""
  normalizer = {"normalizer.new_mean": CIFAR_MEAN.astype(np.float32)[:, None, None],
                "normalizer.new_std": CIFAR_STD.astype(np.float32)[:, None, None]}
  model = {**normalizer, **{f"model.{k}": v for k, v in sd.items()},
           **{f"attacker.{k}": v for k, v in normalizer.items()},
           **{f"attacker.model.{k}": v for k, v in sd.items()}}
  create = torch_format.fake_function("dill._dill", "_create_function")
  schedule = torch_format.instance("torch.optim.lr_scheduler", "LambdaLR",
                                   lr_lambdas=[torch_format.Call(create, b"code", {}, "<lambda>")])
  return {"model": {f"module.{k}": v for k, v in model.items()},
          "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": []}]},
          "schedule": schedule, "epoch": 150, "amp": None}


@pytest.mark.parametrize("arch", ["resnet50", "resnet18"])
def test_robustness_resnet_matches_numpy_forward(tmp_path, arch):
  bottleneck, blocks = robust_resnet.RESNETS[arch]
  rng = np.random.default_rng(0)
  sd = _state(rng, bottleneck, blocks)
  source = torch_format.torch_save(tmp_path / "cifar_l2_1_0.pt", _robustness_checkpoint(sd))
  config, state = classifier.robustness_run(torch_files.load(source), source)
  assert (config.method, config.classifier.name) == ("classifier", arch)
  assert config.classifier.resnet_width == WIDTH
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  logits = classifier.build_model(config).apply({"params": state.params}, jnp.asarray(x))
  want = _forward(sd, (x.transpose(0, 3, 1, 2) + 1) / 2, bottleneck, blocks)
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
  if arch == "resnet50":
    workdir, step = import_reference.import_checkpoint(source, str(tmp_path / "w"))
    saved = json.loads(open(os.path.join(workdir, "config.json")).read())
    assert step == 0 and saved["method"] == "classifier"
    assert saved["classifier"]["name"] == "resnet50"
    np.testing.assert_allclose(saved["classifier"]["input_std"], CIFAR_STD, rtol=1e-6)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "0"))
    import fdrl_jax  # the workdir loads without CIFAR10 here; its output is log p(y | x)
    logp = np.asarray(fdrl_jax.load(workdir).output(jnp.asarray(x)))
    np.testing.assert_allclose(logp, want - np.log(np.exp(want).sum(1, keepdims=True)),
                               rtol=1e-4, atol=1e-4)


def test_unknown_resnet_is_one_line(tmp_path):
  sd = _state(np.random.default_rng(1), True, (3, 4, 23, 3))
  source = torch_format.torch_save(tmp_path / "r101.pt", _robustness_checkpoint(sd))
  with pytest.raises(ValueError, match=r"a ResNet of bottleneck blocks \(3, 4, 23, 3\), which "
                     r"this library does not have") as info:
    import_reference.import_checkpoint(source, str(tmp_path / "w"))
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="--prior is for FDRL checkpoints"):
    import_reference.import_checkpoint(source, str(tmp_path / "w"), "prior.pt")
