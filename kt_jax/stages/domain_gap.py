"""The `domain_gap` stage: Frechet distances between a reference image set (the downstream
task's images) and other sets, in one frozen model's feature space; One-to-Transfer-All's
domain-gap check (is a transfer set closer to the downstream domain than raw upstream data?).

Sets are image folders (flat or class subfolders; e.g. a `rerepresent` stage's `images/`, a
`digg_generate` stage's `images/` or `originals/`) or the word "upstream": `data.pool_size`
crops of the shipped natural photos (`data.pool_crop_size` px), the upstream images the
VQGAN and the latent transformer were trained on. Each set's features are the model's pooled
feature (`x_norm_clstoken`) at the model's input size, every image resized as the evaluators
do; the distance is `kt_jax.eval.fd.feature_distance` (the stable matrix square root).

Writes `fd.json` in its workdir, `{"reference": ..., "sets": {name: {"path", "images", "fd"}}}`,
and one row per set into `<report.dir>/report.*` (metric "fd": the report's domain-gap table).
FD grows as sets shrink (its estimate is biased by the sample size), so compare sets of
similar sizes; the row says how many images each had.
"""
import json

from absl import logging

from kt_jax import convert, paths
from kt_jax.data import shipped, sources
from kt_jax.errors import UserError
from kt_jax.eval import fd, report
from kt_jax.stages import checks

UPSTREAM = "upstream"
RESULT_FILE = "fd.json"


def validate(config) -> None:
  checks.check_teacher_path(config.model, "model")
  checks.check_non_negative(config, "image_size")
  checks.check_positive(config, "batch_size")
  if not config.reference or not config.sets:
    raise UserError("domain_gap needs config.reference (a folder) and config.sets "
                    "(name -> folder or 'upstream').")
  if UPSTREAM in (config.reference, *config.sets.values()) and not (
      config.data.pool_size > 1 and config.data.pool_crop_size > 0):
    raise UserError("a set 'upstream' needs config.data.pool_size > 1 and "
                    "config.data.pool_crop_size > 0 (the shipped natural crops).")


def _source(path: str, data):
  if path == UPSTREAM:
    return sources.InMemorySource(shipped.unlabelled_pool(data.pool_size, data.pool_crop_size,
                                                          seed=0))
  fd.check_folder(path)
  return sources.ImageFolderSource(path)


def run(config, workdir: str) -> dict:
  # Every set is checked (and the shipped crops built) before the model loads.
  reference_source = _source(config.reference, config.data)
  sets = {name: _source(path, config.data) for name, path in config.sets.items()}
  module, variables = convert.load_pretrained(config.model)
  spec = convert.input_spec(config.model, config.image_size)

  def pooled(source, name):
    return fd.source_features(source, module, variables, spec, config.batch_size,
                              desc=f"features {name}")
  reference = pooled(reference_source, "reference")
  feats = {name: pooled(source, name) for name, source in sets.items()}
  result = {"reference": {"path": config.reference, "images": len(reference)},
            "model": config.model, "image_size": spec.image_size, "sets": {}}
  for name, path in config.sets.items():
    distance = fd.feature_distance(reference, feats[name])
    logging.info("FD(%s [%d], %s [%d]) = %.4f", config.reference, len(reference), name,
                 len(feats[name]), distance)
    result["sets"][name] = {"path": path, "images": len(feats[name]), "fd": distance}
    if config.report.dir:
      report.append_row(paths.join(workdir, config.report.dir), {
          "method": "domain gap (FD)", "metric": "fd", "test": distance,
          "reference": f"{config.report.reference_label or config.reference} "
                       f"({len(reference)})",
          "transfer_set": f"{name} ({len(feats[name])})", "teacher": config.model,
          "workdir": f"{workdir}#{name}"})
  paths.write_text(paths.join(workdir, RESULT_FILE), json.dumps(result, indent=1))
  return {name: v["fd"] for name, v in result["sets"].items()}
