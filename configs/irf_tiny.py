"""IRF (One-to-Transfer-All's Image Re-representation Fine-tuning) on 10-shot MNIST, with the
LP and FT baselines, each chosen on the validation split over a learning-rate grid:

  python -m kt_jax.main --config=configs/irf_tiny.py --workdir=workdirs/irf_tiny
  python -m kt_jax.main --config=configs/irf_tiny.py:paper --workdir=workdirs/irf_paper_grid
  python -m kt_jax.main --config=configs/irf_tiny.py:tiny --workdir=/tmp/irf   # seconds-scale

Stages (kt_jax/ota_recipe.py): `vqgan` (configs/vqgan_tiny.py: a 32 px VQGAN on the shipped
natural images) -> `rerepresent` (the 80 train digits through it) -> `deliver_lr<i>` + `deliver`
(the shipped ImageNet EfficientNet-Lite2 frozen, its head trained on the re-represented
digits, the best lr on validation) -> `calibrate_lr<i>_wd<j>` + `calibrate` (everything trained
on the original digits from deliver/model) ; baselines `lp_*` + `lp`, `ft_*` + `ft` on the
original digits. The teacher runs at 64 px: the 32 px re-represented digits (and the 28 px
originals) are upsampled by the finetune input pipeline's random square crop + resize.
`<workdir>/report.md`: LP, FT, IRF stage 3 only, IRF; `<workdir>/sweep/report.md`: every grid
point (val and test).

Grids: default, what the 2-core CPU affords (stage 3: lr 1, 0.1, 0.01, 0.001; stage 4: lr 1e-2,
1e-3 at weight decay 1e-5); `:paper`, the paper's (stage 3 the same; stage 4: 4 log-spaced lrs
in [1e-2, 1e-5] x weight decay {1e-3, 1e-4, 1e-5}: 12 runs each for IRF and FT).
"""
from kt_jax import ota_recipe


def sizes(arg: str = "") -> dict:
  if arg == "tiny":
    return dict(task="mnist", labels=3, val=1, test_per_class=3, vfm_size=32, steps=2,
                batch=8, stage3_lrs=(0.1, 0.01), stage4_lrs=(1e-2,), stage4_wds=(1e-4,))
  s = dict(task="mnist", labels=10, val=2, test_per_class=50, vfm_size=64, steps=100,
           batch=32, stage3_lrs=ota_recipe.PAPER_STAGE3_LRS, stage4_lrs=(1e-2, 1e-3),
           stage4_wds=(1e-5,))
  if arg == "paper":
    s.update(stage4_lrs=ota_recipe.PAPER_STAGE4_LRS, stage4_wds=ota_recipe.PAPER_STAGE4_WDS)
  elif arg:
    raise ValueError(f"configs/irf_tiny.py takes '', 'tiny' or 'paper', not {arg!r}.")
  return s


def tiny_vqgan():
  """vqgan_tiny's settings, two steps on 24 crops, no perceptual network: a VQGAN in seconds."""
  c = ota_recipe.vqgan_tiny_config()
  c.batch_size, c.total_steps = 8, 2
  c.log_every_steps, c.eval_every_steps = 1, 0
  c.checkpoint_every_steps, c.async_checkpoints = 2, False
  c.discriminator.update(ndf=8, n_layers=1)
  c.loss.perceptual_network, c.loss.disc_start = "", 1
  c.data.pool_size, c.data.pool_crop_size, c.data.holdout = 24, 32, 8
  c.vqgan.overrides = {"codebook_size": 32}
  return c


def get_config(arg: str = ""):
  s = sizes(arg)
  if arg == "tiny":
    return ota_recipe.irf(s, tiny_vqgan(), vfm_path="", vfm_name="resnet18",
                          vfm_overrides={"stage_sizes": (1, 1), "width": 8},
                          vfm_label="resnet18 (tiny, random)")
  return ota_recipe.irf(s, ota_recipe.vqgan_tiny_config())
