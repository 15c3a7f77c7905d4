"""DIGG: the sampler's forced (visible) indices, the `digg_generate` stage (visible indices
never change, resumed runs equal uninterrupted ones, a finished stage is skipped), and the
tiny DIGG pipeline."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kt_jax import config_defaults, stages
from kt_jax.convert import kt_format
from kt_jax.models import latent_transformer, sampling, vqgan
from kt_jax.stages import digg_generate

SIZE, CODES = 16, 32   # a 4x4 grid of 32 codes
GRID = (4, 4)


def _random_variables(module, *inputs, std=0.3):
  """Random variables of `module`'s shapes: traced, not compiled (an init of the VQGAN takes
  a minute of XLA compilation on a loaded CPU). LayerNorm/GroupNorm scales stay positive."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)
  rng = np.random.default_rng(0)
  def fill(path, leaf):
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return np.ones(leaf.shape, leaf.dtype)
    return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _transformer(seq_len=16, vocab=CODES):
  module = latent_transformer.LatentTransformer(vocab_size=vocab, seq_len=seq_len, width=32,
                                                depth=1, num_heads=2)
  # std 0.3: logits far from uniform, so samples depend on the context.
  return module, _random_variables(module, jnp.zeros((1, seq_len), jnp.int32))


@pytest.mark.parametrize("kind,cached", [("bottom", True), ("right", True), ("box", False)])
def test_sampler_keeps_visible_indices_and_conditions_on_them(kind, cached):
  """Forced positions equal the prefix; free positions follow an independent reference: a
  Python loop over positions drawing from the full model's logits with each row's key."""
  module, params = _transformer()
  rng = np.random.default_rng(0)
  prefix = jnp.asarray(rng.integers(0, CODES, (3, 16)), jnp.int32)
  visible = np.stack([digg_generate.visible_mask(kind, GRID, np.random.default_rng([1, r]))
                      for r in range(3)])
  keys = jnp.stack([jax.random.key(r + 10) for r in range(3)])
  out = np.asarray(sampling.sample(module, params, keys, prefix, 0, temperature=1.0,
                                   cached=cached, given=jnp.asarray(visible)))
  np.testing.assert_array_equal(out[visible], np.asarray(prefix)[visible])
  assert (~visible).any() and (out[~visible] != np.asarray(prefix)[~visible]).any()
  apply = jax.jit(module.apply)
  draw = jax.jit(lambda key, t, logits: jax.random.categorical(jax.random.fold_in(key, t),
                                                                logits))
  tokens = np.asarray(prefix).copy()
  for t in range(16):
    logits = apply(params, jnp.asarray(tokens))[:, t]
    for r in range(3):
      if not visible[r, t]:
        tokens[r, t] = int(draw(keys[r], t, logits[r]))
  np.testing.assert_array_equal(out, tokens)


def test_per_row_keys_make_a_row_independent_of_its_batch():
  module, params = _transformer()
  prefix = jnp.asarray(np.random.default_rng(1).integers(0, CODES, (4, 16)), jnp.int32)
  keys = jnp.stack([jax.random.key(r) for r in range(4)])
  whole = sampling.sample(module, params, keys, prefix, 8, top_k=5)
  alone = sampling.sample(module, params, keys[2:3], prefix[2:3], 8, top_k=5)
  np.testing.assert_array_equal(whole[2:3], alone)


def test_visible_masks():
  bottom = digg_generate.visible_mask("bottom", (4, 6)).reshape(4, 6)
  assert bottom[:2].all() and not bottom[2:].any()
  right = digg_generate.visible_mask("right", (4, 6)).reshape(4, 6)
  assert right[:, :3].all() and not right[:, 3:].any()
  for seed in range(20):
    box = ~digg_generate.visible_mask("box", (8, 8), np.random.default_rng(seed),
                                      (0.25, 0.5)).reshape(8, 8)
    rows, cols = np.nonzero(box)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert box.sum() == h * w and 2 <= h <= 4 and 2 <= w <= 4  # one box of the asked sides


def _models(root):
  """A random tiny VQGAN (16 px -> 4x4 of 32 codes) and transformer as model directories."""
  vq = vqgan.VQGAN(base_channels=8, channel_multiplier=(1, 1, 2), num_res_blocks=1,
                   latent_channels=8, codebook_size=CODES, codebook_dim=4, num_groups=4)
  vq_vars = _random_variables(vq, jnp.zeros((1, SIZE, SIZE, 3)), std=0.1)
  kt_format.save(str(root / "vqgan"), vq, vq_vars)
  module, params = _transformer()
  kt_format.save(str(root / "lt" / "model"), module, params)
  return str(root / "vqgan"), str(root / "lt")


def _config(vqgan_path, transformer_path, kind="bottom", **kwargs):
  c = config_defaults.digg_generate_config()
  c.update(vqgan_path=vqgan_path, transformer_path=transformer_path, image_size=SIZE,
           samples_per_image=3, batch_size=4, **kwargs)
  c.mask.kind = kind
  c.data.update(labels_per_class=2, val_per_class=1)  # 10 train digits -> 30 samples
  c.contact_sheet.update(rows=0)  # drawn (matplotlib: seconds) by one test only
  return c


def _read(workdir):
  names = sorted(os.listdir(os.path.join(workdir, "images")))
  return names, [np.asarray(Image.open(os.path.join(workdir, "images", n))) for n in names]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return _models(tmp_path_factory.mktemp("digg_models"))


@pytest.mark.parametrize("kind", ["bottom", "right", "box"])
def test_stage_never_changes_visible_indices(models, tmp_path, kind):
  config = _config(*models, kind=kind)
  if kind == "bottom":
    config.contact_sheet.update(rows=3, samples=2)
  summary = stages.run(config, str(tmp_path))
  assert summary["generated"] == 30 and summary["batches"] == 8
  batches = sorted((tmp_path / "codes").iterdir())
  assert len(batches) == 8
  masked = 0
  for path in batches:
    b = np.load(path)
    assert b["completed"].shape == b["encoded"].shape == b["visible"].shape
    np.testing.assert_array_equal(b["completed"][b["visible"]], b["encoded"][b["visible"]])
    masked += (~b["visible"]).sum()
    for (i, j), visible in zip(b["pairs"], b["visible"]):  # each pair's own mask
      expected = digg_generate.visible_mask(kind, GRID, np.random.default_rng([0, i, j]))
      np.testing.assert_array_equal(visible, expected)
  assert masked > 0
  names, images = _read(tmp_path)
  assert len(names) == 30 and images[0].shape == (SIZE, SIZE, 3)
  assert len(os.listdir(tmp_path / "originals")) == 10
  records = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
  assert len(records) == 30 and {r["sample"] for r in records} == {0, 1, 2}
  splits = json.load(open(tmp_path / "splits.json"))
  assert [r["source_id"] for r in records[::3]] == splits["train_ids"]
  if kind == "bottom":  # original, reconstruction, visible part, 2 samples
    assert Image.open(tmp_path / "contact_sheet.png").size == (64 * (3 + 2), 64 * 3)
  np.testing.assert_array_equal(  # per-sample keys, computed batched
      jax.random.key_data(digg_generate.sample_keys(0, np.array([3]), np.array([2]))[0]),
      jax.random.key_data(digg_generate.sample_key(0, 3, 2)))


def test_killed_run_resumes_to_the_same_images_and_is_skipped_when_done(models, tmp_path):
  whole = tmp_path / "whole"
  stages.run(_config(*models, kind="box"), str(whole))
  # Stopped on purpose after 3 batches, then killed inside the 5th (an exception after its
  # first image is written): the rerun finishes and equals the uninterrupted run.
  part = tmp_path / "part"
  summary = stages.run(_config(*models, kind="box", stop_after_batches=3), str(part))
  assert summary["completed"] is False and len(os.listdir(part / "codes")) == 3
  writes = {"n": 0}
  original = digg_generate._write_png

  def crash(path, image):
    if "images" in path:
      writes["n"] += 1
      if writes["n"] == 9:
        raise KeyboardInterrupt("killed")
    original(path, image)
  digg_generate._write_png = crash
  try:
    with pytest.raises(KeyboardInterrupt):
      stages.run(_config(*models, kind="box"), str(part))
  finally:
    digg_generate._write_png = original
  assert len(os.listdir(part / "codes")) == 5 and not (part / "summary.json").exists()
  stages.run(_config(*models, kind="box"), str(part))
  names_whole, images_whole = _read(whole)
  names_part, images_part = _read(part)
  assert names_whole == names_part
  for a, b in zip(images_whole, images_part):
    np.testing.assert_array_equal(a, b)
  # Finished: a rerun is skipped (nothing is rewritten).
  stamp = os.path.getmtime(part / "images" / names_part[0])
  again = stages.run(_config(*models, kind="box"), str(part))
  assert again["generated"] == 30 and os.path.getmtime(part / "images" / names_part[0]) == stamp


def _tiny_chain():
  from kt_jax import digg_recipe
  return digg_recipe.chain(digg_recipe.tiny_upstream(digg_recipe.sizes(True)), tiny=True)


def test_digg_images_are_the_distillation_transfer_set(models, tmp_path):
  """The tiny pipeline's wiring without its training: its digg stage (on the random models)
  writes what its kd_* stages read, through the image-folder source."""
  from kt_jax.data import builder
  from kt_jax.stages import checks
  chain = _tiny_chain()
  assert chain.order[:2] == ("vqgan", "latent_transformer")
  checks.check(chain)  # "{stage:digg}/images" is checked once the stage has run
  gen = chain.stages.digg
  gen.vqgan_path, gen.transformer_path = models
  gen.contact_sheet.rows = 0
  stages.run(gen, str(tmp_path / "digg"))
  workdirs = {"digg": str(tmp_path / "digg"), "digg_small": str(tmp_path / "digg")}
  n = 10 * (gen.data.labels_per_class - gen.data.val_per_class)
  for name, expected in (("kd_digg", n * gen.samples_per_image), ("kd_raw", n)):
    config = stages._substitute(chain.stages[name], workdirs)
    assert config.distill.lambda_patch == 0 and config.distill.loss == "l2"
    checks.check(config)
    assert len(builder.build_source(config)) == expected
  for name in ("kd_digg_ft", "kd_raw_ft", "kd_upstream_ft", "imagenet"):  # one split for all
    ft = chain.stages[name]
    assert (ft.data.task, ft.data.labels_per_class, ft.data.val_per_class, ft.data.split_seed) \
        == (gen.data.task, gen.data.labels_per_class, gen.data.val_per_class,
            gen.data.split_seed)
    assert ft.report.dir == ".."


@pytest.mark.slow
def test_tiny_digg_pipeline_end_to_end(tmp_path):
  """configs/digg_tiny.py:tiny trains everything (minutes on a loaded 2-core CPU: the
  stages compile a VQGAN, a GAN step and five students) and writes one report row per
  finetune."""
  chain = _tiny_chain()
  summary = stages.run(chain, str(tmp_path))
  assert set(summary["stages"]) == set(chain.order)
  rows = json.load(open(tmp_path / "report.json"))
  assert len(rows) == 5 and len({r["transfer_set"] for r in rows}) == 5
  assert (tmp_path / "digg" / "contact_sheet.png").exists()
  assert len(os.listdir(tmp_path / "digg" / "images")) == 20 * 2
