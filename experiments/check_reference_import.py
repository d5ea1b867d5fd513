"""By-hand check of ``python -m fdrl_jax.import_reference`` against the reference's own code.

Needs PyTorch and a checkout of clear-nus/fdrl (neither is a dependency of fdrl_jax or its tests):
  python -m experiments.check_reference_import --reference=/path/to/clear-nus/fdrl [--out=DIR] \
      [--robustness=/path/to/MadryLab/robustness]

For each reference estimator (ResNet32x32, ResNet64x64, ResNet128x128, ResNet64x64Shallow, with and
without spectral norm and self-attention, and the toy MLP) it builds the model with the reference's
``src/models.py``, takes a few Adam steps in training mode (so the spectral-norm vectors and the
EMA have moved), saves a checkpoint as ``train_ddp.py`` does (``module.`` prefix, Adam, EMA
shadow, scheduler, config), imports it with fdrl_jax, and prints the largest absolute difference
between the reference's EMA model (in training mode, as its sampling runs it) and the imported
estimator: of the outputs on random inputs, and of the particles after a noise-free 5-step flow
(the reference's ``src/model_utils.flow`` against ``fdrl_jax.flow``), and of the same flow with
the reference's spectral-norm vector reset to the saved one before every step (``u frozen``: the
imported estimator's semantics; the reference runs one more power iteration per call, which moves
σ until u has converged — ``--steps`` sets how far it is).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

import numpy as np

CASES = [  # (name, reference config changes, batch)
    ("ResNet32x32 sn", dict(img_size=32, model="resnet", spectral_norm=True, self_attn=False), 8),
    ("ResNet32x32 sn+attn", dict(img_size=32, model="resnet", spectral_norm=True,
                                 self_attn=True), 8),
    ("ResNet64x64", dict(img_size=64, model="resnet", spectral_norm=False, self_attn=False,
                         dataset="celeba"), 4),
    ("ResNet64x64Shallow sn+attn", dict(img_size=64, model="resnetshallow", spectral_norm=True,
                                        self_attn=True, dataset="cat2dog"), 4),
    ("ResNet128x128 sn+attn", dict(img_size=128, model="resnet", spectral_norm=True,
                                   self_attn=True, dataset="lsun_church"), 2),
    ("MLP", dict(dataset="swissroll", in_dim=2, hidden_dim=64, n_hidden_layers=3,
                 spectral_norm=False, loss_function="LR", f_divergence="KL", eta=1.0), 64),
]
BASE = dict(dataset="cifar10", n_channels=3, loss_function="LSIF", f_divergence="Pearson", eta=3.0,
            n_flow_steps=100, noise_factor=0.01, ema=True, ema_rate=0.9, learning_rate=1e-4,
            scheduler_gamma=0.1, scheduler_steps=[80000, 90000], n_epochs=100000,
            train_batch_size=8, device="cpu")


def reference_checkpoint(torch, models, ema_module, config: dict, batch: int, path: str,
                         steps: int):
  """Builds the reference estimator, takes ``steps`` Adam steps in training mode (two forward
  passes, two power iterations each), saves as train_ddp.py."""
  torch.manual_seed(0)
  model = models.MLP(config) if "in_dim" in config else models.get_model(config)
  optim = torch.optim.Adam(model.parameters(), lr=1e-3, betas=[0.9, 0.999])
  scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, config["scheduler_gamma"])
  ema = ema_module.EMAHelper(mu=config["ema_rate"])
  ema.register(model)
  shape = (batch, 2) if "in_dim" in config else (batch, 3, config["img_size"], config["img_size"])
  for _ in range(steps):
    loss = (model(torch.rand(shape) * 2 - 1) ** 2).mean() - model(torch.rand(shape) - 0.5).mean()
    optim.zero_grad()
    loss.backward()
    optim.step()
    ema.update(model)
  torch.save({"step": 2, "model": {"module." + k: v for k, v in model.state_dict().items()},
              "optim": optim.state_dict(), "ema": ema.state_dict(),
              "scheduler": scheduler.state_dict(), "config": config}, path)
  ema_model = models.MLP(config) if "in_dim" in config else models.get_model(config)
  ema_model.load_state_dict(ema.state_dict())  # the reference's ema_copy: training mode
  return ema_model, shape


def check_robustness(torch, checkout: str, out: str) -> None:
  """robustness's CIFAR ResNet18 / ResNet50 (random weights and batch-norm statistics, inference
  mode) saved as its train.py saves an AttackerModel under DataParallel, imported as a classifier
  workdir's network, logits compared on random [-1, 1] images."""
  sys.path.insert(0, os.path.abspath(checkout))
  import jax.numpy as jnp
  from robustness.cifar_models import resnet

  from fdrl_jax import classifier, torch_files
  mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
  for name in ("resnet18", "resnet50"):
    torch.manual_seed(0)
    net = getattr(resnet, name)(num_classes=10).eval()
    with torch.no_grad():
      for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
          m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
          m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    sd = {"normalizer.new_mean": mean[:, None, None], "normalizer.new_std": std[:, None, None]}
    sd.update({"model." + k: v for k, v in net.state_dict().items()})
    sd.update({"attacker." + k: v for k, v in list(sd.items())})
    path = os.path.join(out, f"robustness_{name}.pt")
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 1}, path)
    config, state = classifier.robustness_run(torch_files.load(path), path)
    x = np.random.default_rng(2).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
      x01 = ((torch.from_numpy(x) + 1) / 2).clamp(0, 1)  # as InputNormalize
      want = net((x01 - mean[:, None, None]) / std[:, None, None]).numpy()
    got = np.asarray(classifier.build_model(config).apply({"params": state.params},
                                                         jnp.asarray(x.transpose(0, 2, 3, 1))))
    print(f"robustness {name:18s} max |Δ logit| {np.abs(got - want).max():.3g} "
          f"(max |logit| {np.abs(want).max():.3g})", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", required=True, help="a checkout of clear-nus/fdrl")
  parser.add_argument("--out", default="", help="folder for the checkpoints (default: temporary)")
  parser.add_argument("--steps", type=int, default=3, help="Adam steps before saving")
  parser.add_argument("--robustness", default="", help="a checkout of MadryLab/robustness")
  args = parser.parse_args()
  import torch  # only here: this script is the only place fdrl_jax's checks use PyTorch
  sys.path.insert(0, os.path.abspath(args.reference))
  import jax
  import jax.numpy as jnp
  from src import ema as ema_module, model_utils, models  # the reference's own code

  import fdrl_jax
  from fdrl_jax import fdrl, import_reference, reference_config, torch_files, torch_objects

  out = args.out or tempfile.mkdtemp(prefix="check_reference_import_")
  os.makedirs(out, exist_ok=True)
  if args.robustness:
    check_robustness(torch, args.robustness, out)
  print(f"{'estimator':28s} {'max |Δ output|':>15s} {'max |output|':>13s} {'max |Δ flow5|':>14s} "
        f"{'u frozen':>9s}")
  for name, changes, batch in CASES:
    config = {**BASE, **changes}
    path = os.path.join(out, name.replace(" ", "_").replace("+", "_") + ".pt")
    ema_model, shape = reference_checkpoint(torch, models, ema_module, config, batch, path,
                                           args.steps)
    ckpt = torch_files.load(path)
    cfg = reference_config.reference_config(ckpt, path)
    reference_config.set_width(cfg, torch_objects.strip_prefix(ckpt["model"]), path)
    state = import_reference.build_state(cfg, ckpt, None, path)
    estimator = fdrl.create_estimator(cfg)
    _, potential_of = fdrl.build_potential(cfg)
    variables = state.ema_variables()
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    to_jax = (lambda a: jnp.asarray(a)) if len(shape) == 2 else (
        lambda a: jnp.asarray(a.transpose(0, 2, 3, 1)))
    want = copy.deepcopy(ema_model)(torch.from_numpy(x)).detach().numpy().reshape(-1)
    got = np.asarray(estimator.apply(variables, to_jax(x))).reshape(-1)
    moved_ref = model_utils.flow(torch.from_numpy(x), copy.deepcopy(ema_model), 5, config["eta"],
                                 0.0, config["f_divergence"]).numpy()
    frozen = torch.from_numpy(x).clone()  # the reference's flow with u reset before every call
    for _ in range(5):
      xk = frozen.clone().requires_grad_(True)
      y = copy.deepcopy(ema_model)(xk)
      f_prime = {"Pearson": lambda o: 2 * o, "KL": lambda o: o}[config["f_divergence"]](y)
      frozen = frozen - config["eta"] * torch.autograd.grad(f_prime.sum(), [xk])[0]
    frozen = frozen.detach().numpy()
    potential = fdrl.estimator_potential(estimator.apply, potential_of, variables)
    moved = np.asarray(fdrl_jax.flow(potential, to_jax(x), jax.random.key(0), num_steps=5,
                                     step_size=config["eta"], noise_scale=0.0))
    if len(shape) == 4:
      moved = moved.transpose(0, 3, 1, 2)
    print(f"{name:28s} {np.abs(got - want).max():15.3g} {np.abs(want).max():13.3g} "
          f"{np.abs(moved - moved_ref).max():14.3g} {np.abs(moved - frozen).max():9.3g}",
          flush=True)


if __name__ == "__main__":
  main()
