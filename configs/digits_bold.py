"""Unpaired image-to-image translation on bundled data (FDRL Sec. 6.5): plain 8×8 digits → bold.

Source = 750 plain training digits (the prior: ``prior.name=empirical``), target = the other 750
training digits made bold (each pixel the max of itself and its horizontal neighbour,
``fdrl_jax.bundled.bold``); unpaired, disjoint halves. The 297 held-out digits are the test images
of both domains. Trained exactly as Algorithm 1, the source draws dequantised as the data.

Run (CPU, 2 cores: a few minutes), then translate given digits (.npz key x, (N, 8, 8, 1), [-1, 1]):
  python -m fdrl_jax.main --config=configs/digits_bold.py --workdir=runs/digits_bold
  python -m fdrl_jax.main --config=configs/digits_bold.py --workdir=runs/digits_bold \
      --mode=translate --input=SRC.npz --output=OUT.npz
``--mode=eval``: FD-digits of the translated held-out digits against the held-out bold ones, beside
the untranslated digits' (Table 3's protocol).
"""

from fdrl_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.name = "digits_bold"
  config.prior.name = "empirical"
  return config
