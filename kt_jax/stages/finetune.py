"""The `finetune` stage: a backbone plus a task head, trained on the labelled few-shot split.

Every supervised run of task-oriented transfer is this stage: teaching the task to the VFM,
finetuning a distilled student, and every baseline (student from scratch, ImageNet-pretrained
student, feature-distilled student). The backbone is `backbone.path` (anything
`convert.load_pretrained` reads: a checkpoint, a kt_jax model directory such as an earlier
stage's "{stage:NAME}/model", a shipped model like `efficientnet_lite2`, `random:<name>`) or a
registered `backbone.name` initialised from the seed. A task model given as the path (a
finetuned or task-distilled classifier) contributes its backbone, and its head too when the
class count matches (`backbone.keep_head`).

Modes (`finetune.mode`): `full` trains everything; `linear_probe` freezes the backbone (the
optimizer gives its weights exactly zero updates, BatchNorm keeps its statistics); `lp_ft`
runs a linear probe of `finetune.probe_steps` steps in `<workdir>/probe/` (a stage of its own:
resumed, skipped when done), then trains every parameter from the probed model here.
Layer-wise lr decay is `optimizer.layer_decay`, label smoothing `finetune.label_smoothing`.
`data.train_images` (a `rerepresent` stage's workdir) trains on the re-represented images of
the same train records (ids and labels checked) while validation and test stay the task's
originals: IRF's delivering stage.

Writes `<workdir>/model/` (the task model with its class names; `distill_task` loads it as
its teacher), `splits.json` (the chosen ids), `eval.jsonl` (val and test scores: top-1, or
mIoU for segmentation) and a row of the report (`kt_jax.eval.report`).
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kt_jax import convert, models, paths, sharding
from kt_jax.data import fewshot, pipeline
from kt_jax.errors import UserError
from kt_jax.models.classifier import CLS_MEAN_PATCH, Classifier, Segmenter
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import supervised
from kt_jax.stages import checks
from kt_jax.stages.backbone import Backbone, backbone_hooks, load_backbone, overlay

MODES = ("full", "linear_probe", "lp_ft")
HEAD_FEATURES = ("x_norm_clstoken", CLS_MEAN_PATCH)
BACKBONE_FREEZE = ("^model/backbone/",)
PROBE_DIR = "probe"


def validate(config) -> None:
  """Everything checkable before a model is loaded (see stages.checks)."""
  checks.check_model_source(config.backbone, "backbone")
  checks.check_choice(config.compute_dtype, "compute_dtype", checks.COMPUTE_DTYPES)
  checks.check_choice(config.finetune.mode, "finetune.mode", MODES)
  checks.check_choice(config.head.feature, "head.feature", HEAD_FEATURES)
  checks.check_non_negative(config, "image_size", "head.hidden", "head.skip_stride",
                           "eval.mask_size", "finetune.label_smoothing")
  checks.check_choice(config.finetune.class_weights, "finetune.class_weights",
                      ("none", MEDIAN_FREQUENCY))
  if not config.finetune.label_smoothing < 1:
    raise UserError("config.finetune.label_smoothing must be in [0, 1).")
  if not config.batch_size > 0:
    raise UserError(f"config.batch_size must be positive, got {config.batch_size!r}.")
  if not (config.total_steps > 0 or config.epochs > 0):
    raise UserError("Set --config.total_steps or --config.epochs to a positive number.")
  if config.finetune.mode == "lp_ft":
    checks.check_positive(config, "finetune.probe_steps", "finetune.probe_lr")
  checks.check_positive(config, "eval.batch_size")
  from kt_jax.train import optimizer
  checks.check_choice(config.optimizer.name, "optimizer.name", optimizer.OPTIMIZERS)
  checks.check_choice(config.optimizer.schedule, "optimizer.schedule", optimizer.SCHEDULES)
  fewshot.check(config.data.task, config.data.labels_per_class, config.data.val_per_class)
  train_images = config.data.train_images
  if train_images and not checks.is_deferred(train_images):
    from kt_jax.stages import rerepresent
    if not paths.exists(paths.join(train_images, rerepresent.MANIFEST)):
      raise UserError(f"data.train_images={train_images} is not a finished rerepresent "
                      f"stage's workdir (no {rerepresent.MANIFEST}).")
  if fewshot.task_kind(config.data.task) == fewshot.SEGMENTATION:
    _check_spatial_early(config)


def _check_spatial_early(config) -> None:
  """A segmentation head on a backbone without a spatial output: shapes only, no weights read
  (registered names and kt_jax model directories; other checkpoints are checked at load)."""
  b = config.backbone
  module = None
  if b.name:
    module = models.create(b.name, **b.overrides.to_dict())
  elif b.path.startswith("random:"):
    module = models.create(b.path.removeprefix("random:"))
  elif not checks.is_deferred(b.path) and paths.isdir(b.path):
    from kt_jax.convert import kt_format
    if kt_format.is_kt_dir(b.path):
      module = kt_format.module_from_spec(kt_format.read_spec(b.path))
      module = getattr(module, "backbone", module)
  if module is not None:
    checks.check_spatial(module, image_size(config, _spec_without_loading(config)),
                         b.name or b.path, config.head)


def _spec_without_loading(config) -> InputSpec:
  b = config.backbone
  if b.name:
    return models.input_spec(b.name)
  return convert.input_spec(b.path) if not checks.is_deferred(b.path) else InputSpec()


def image_size(config, spec: InputSpec) -> int:
  return config.image_size or spec.image_size


def data_spec(config, spec: InputSpec) -> InputSpec:
  """The images' normalisation: `data.mean`/`data.std` when set, else the backbone's own."""
  return InputSpec(image_size(config, spec), tuple(config.data.mean or spec.mean),
                   tuple(config.data.std or spec.std))


def build_objective(config, splits=None, backbone: Backbone | None = None
                    ) -> supervised.Supervised:
  """The objective for `config`; `splits` gives the classes (else the task is built here)."""
  dtype = jnp.dtype(config.compute_dtype)
  backbone = backbone or load_backbone(config, dtype)
  splits = splits or fewshot.build_splits(config.data, config.data.split_seed)
  spec = data_spec(config, backbone.spec)
  frozen = config.finetune.mode == "linear_probe"
  segmentation = splits.kind == fewshot.SEGMENTATION
  if segmentation:
    checks.check_spatial(backbone.module, spec.image_size,
                         config.backbone.path or config.backbone.name, config.head)
    model = Segmenter(backbone.module, splits.num_classes, config.head.hidden, frozen,
                      config.head.skip_stride)
  else:
    model = Classifier(backbone.module, splits.num_classes, config.head.feature, frozen)
  weights = None
  if segmentation and config.finetune.class_weights == MEDIAN_FREQUENCY:
    weights = supervised.median_frequency_weights(
        pixel_counts(splits.train, splits.num_classes, splits.ignore_index))
    logging.info("Class weights (median frequency): %s",
                 ", ".join(f"{n} {w:.2f}" for n, w in zip(splits.class_names, weights)))
  return supervised.Supervised(model, spec, splits.class_names, segmentation,
                               config.finetune.label_smoothing, frozen, splits.ignore_index,
                               dtype, weights)


MEDIAN_FREQUENCY = "median_frequency"


def pixel_counts(source, num_classes: int, ignore_index: int) -> np.ndarray:
  """(num_classes,) labelled pixels of each class over the masks of `source` (at their own
  size; ignored and out-of-range labels left out)."""
  from kt_jax.data import seg_transforms
  counts = np.zeros(num_classes, np.int64)
  for i in range(len(source)):
    mask = seg_transforms.mask_of(source[i]).astype(np.int64)
    mask = mask[(mask != ignore_index) & (mask < num_classes)]
    counts += np.bincount(mask.reshape(-1), minlength=num_classes)[:num_classes]
  return counts


def init_hooks(backbone: Backbone, objective: supervised.Supervised, keep_head: bool):
  """(params hook, model-state hook) putting the pretrained backbone (and a matching loaded
  head) into the fresh train state; (None, None) for a backbone trained from scratch."""
  if backbone.variables is None:
    return None, None
  head = backbone.head
  kind = fewshot.SEGMENTATION if objective.segmentation else fewshot.CLASSIFICATION
  use_head = (keep_head and head is not None and head["kind"] == kind
              and head["num_classes"] == len(objective.class_names))
  backbone_params, state_hook = backbone_hooks(backbone.variables, "model")

  def params_hook(params):
    params = backbone_params(params)
    model = dict(params["model"])
    if use_head:
      for name in [k for k in model if k.startswith("head")]:
        if name in head["params"]:
          model[name] = overlay(model[name], head["params"][name], "loaded task head")
      logging.info("Kept the loaded model's %s head (%d classes).", kind, head["num_classes"])
    return {**params, "model": model}
  return params_hook, state_hook


def train_stream(config, splits, spec: InputSpec):
  from kt_jax.data import builder, seg_transforms
  aug = config.data.augment
  if splits.kind == fewshot.SEGMENTATION:
    transforms = seg_transforms.train_transforms(spec.image_size, tuple(aug.scale), aug.hflip,
                                                 spec.mean, spec.std)
  else:
    transforms = pipeline.proteus_train_transforms(
        spec.image_size, scale=tuple(aug.scale), ratio=tuple(aug.get("ratio", (3 / 4, 4 / 3))),
        hflip=aug.hflip,
        randaugment_config=aug.randaugment or None, re_prob=aug.random_erasing,
        mean=spec.mean, std=spec.std)
  dataset = pipeline.make_train_loader(
      splits.train, transforms, config.batch_size, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      worker_count=config.data.workers)
  return builder.DataStream(dataset, splits.train), max(1, len(splits.train) // config.batch_size)


def make_evaluate(config, objective: supervised.Supervised, splits):
  """evaluate(step, state) -> {"val/top1", "test/top1"} (or mIoU): the trained model on the
  validation split (for choosing models and hyper-parameters) and the test split (reported)."""
  from kt_jax.data import seg_transforms
  from kt_jax.eval import segmentation
  mesh = sharding.make_mesh(config.mesh.to_dict())
  spec, n = objective.data_spec, len(objective.class_names)
  seg = objective.segmentation
  if seg:
    transforms = seg_transforms.eval_transforms(spec.image_size, spec.mean, spec.std,
                                                config.eval.mask_size)
  else:
    transforms = pipeline.eval_transforms(spec.image_size, config.data.crop_pct,
                                          mean=spec.mean, std=spec.std)
  divisor = int(np.lcm(sharding.batch_divisor(mesh), jax.process_count()))
  batch_size = -(-config.eval.batch_size // divisor) * divisor

  def score(params, model_state, batch):
    pred = objective.predict(params, model_state, batch["image"],
                             batch["mask"].shape[1:3] if seg else None)
    if seg:
      return {"confusion": segmentation.confusion_matrix(pred, batch["mask"], n,
                                                         objective.ignore_index, batch["valid"])}
    valid = batch["valid"].astype(bool)
    return {"correct": jnp.sum((pred == batch["label"]) & valid), "count": jnp.sum(valid)}
  score = jax.jit(score, out_shardings=sharding.replicated(mesh))
  keys = ("image", "mask", "valid") if seg else ("image", "label", "valid")

  def split_score(source, params, model_state) -> float:
    loader = pipeline.make_eval_loader(source, transforms, batch_size,
                                       worker_count=config.data.workers)
    total = None
    for local in loader:
      local = {k: np.asarray(local[k]) for k in keys}
      out = jax.tree.map(sharding.to_host, score(params, model_state,
                                                 sharding.global_batch(local, mesh)))
      total = out if total is None else jax.tree.map(np.add, total, out)
    if seg:
      return segmentation.mean_iou(total["confusion"]), total["confusion"]
    return float(total["correct"]) / max(float(total["count"]), 1.0), None

  metric = "miou" if seg else "top1"

  def evaluate(step, state):
    scores = {}
    for name, source in (("val", splits.val), ("test", splits.test)):
      if source is not None and len(source):
        scores[f"{name}/{metric}"], confusion = split_score(source, state.params,
                                                            state.model_state)
        if confusion is not None:  # the last evaluation's per-class IoU, for the summary
          iou = segmentation.iou_per_class(confusion)
          evaluate.iou_per_class[name] = {
              c: (None if np.isnan(v) else float(v)) for c, v in zip(objective.class_names, iou)}
    logging.info("step %d: %s", step, scores)
    return scores
  evaluate.iou_per_class = {}
  return evaluate, metric


def _probe_config(config):
  """Phase 1 of lp_ft: the same run as a linear probe, its own steps and lr, no report row."""
  import ml_collections
  c = ml_collections.ConfigDict(config.to_dict())
  c.finetune.mode = "linear_probe"
  c.total_steps, c.epochs = config.finetune.probe_steps, 0.0
  c.optimizer.lr = config.finetune.probe_lr
  c.optimizer.warmup_steps, c.optimizer.warmup_epochs = 0, 0.0
  c.optimizer.layer_decay = 0.0
  c.report.dir = ""
  return c


def run(config, workdir: str) -> dict:
  from kt_jax import stages
  from kt_jax.train import trainer
  probe_summary = None
  train_config = config
  if config.finetune.mode == "lp_ft":
    probe_dir = paths.join(workdir, PROBE_DIR)
    probe_summary = stages.run(_probe_config(config), probe_dir)
    if not probe_summary.get("completed", True):
      return {"probe": probe_summary, "completed": False}
    import ml_collections
    train_config = ml_collections.ConfigDict(config.to_dict())
    train_config.backbone.path = paths.join(probe_dir, "model")
    train_config.backbone.name = ""
    train_config.backbone.keep_head = True
    train_config.finetune.mode = "full"
  if train_config.finetune.mode == "linear_probe":
    train_config = _with_freeze(train_config)

  dtype = jnp.dtype(config.compute_dtype)
  splits = build_splits(config)
  if jax.process_index() == 0:
    fewshot.write_record(workdir, splits, {"labels_per_class": config.data.labels_per_class,
                                           "val_per_class": config.data.val_per_class,
                                           "split_seed": config.data.split_seed})
  logging.info("Task %s (%s): %d classes, %d train, %d val, %d test images", splits.name,
               splits.kind, splits.num_classes, len(splits.train_ids), len(splits.val_ids),
               len(splits.test))
  backbone = load_backbone(train_config, dtype)
  objective = build_objective(train_config, splits, backbone)
  params_hook, state_hook = init_hooks(backbone, objective, train_config.backbone.keep_head)
  stream, steps_per_epoch = train_stream(train_config, splits, objective.data_spec)
  evaluate, metric = make_evaluate(train_config, objective, splits)
  last = trainer.train(train_config, workdir, objective, stream, steps_per_epoch, evaluate,
                       init_params_hook=params_hook, init_model_state_hook=state_hook)
  scores = {}
  eval_file = paths.join(workdir, "eval.jsonl")
  if paths.exists(eval_file):
    scores = json.loads(paths.read_text(eval_file).splitlines()[-1])
  completed = bool(last.get("completed", 1.0))
  summary = {"final_metrics": last, "metric": metric, "val": scores.get(f"val/{metric}"),
             "test": scores.get(f"test/{metric}"), "task": splits.name, "kind": splits.kind,
             "classes": list(splits.class_names), "train_images": len(splits.train_ids),
             "val_images": len(splits.val_ids), "test_images": len(splits.test),
             "bad_records": stream.bad_records(), "completed": completed,
             "train_images_from": config.data.train_images or splits.name}
  if evaluate.iou_per_class:
    summary["iou_per_class"] = evaluate.iou_per_class
  if probe_summary is not None:
    summary["probe"] = {k: probe_summary.get(k) for k in ("val", "test", "metric")}
  if completed and jax.process_index() == 0 and config.report.dir:
    summary["report"] = write_report_row(config, workdir, objective, summary)
  print(f"\nfinetune ({config.finetune.mode}) on {splits.name}: "
        + ", ".join(f"{k} {metric} {100 * v:.1f}%" for k, v in
                    (("val", summary["val"]), ("test", summary["test"])) if v is not None))
  return summary


def build_splits(config) -> fewshot.Splits:
  """The few-shot splits of `config.data`; with `data.train_images` (IRF) the train records
  are the rerepresent stage's images of the same ids and labels, val and test the task's."""
  splits = fewshot.build_splits(config.data, config.data.split_seed)
  if config.data.get("train_images"):
    from kt_jax.stages import rerepresent
    splits = dataclasses.replace(
        splits, train=rerepresent.train_source(config.data.train_images, splits))
  return splits


def _with_freeze(config):
  import ml_collections
  c = ml_collections.ConfigDict(config.to_dict())
  c.optimizer.freeze = tuple(config.optimizer.get("freeze", ()) or ()) + BACKBONE_FREEZE
  return c


def write_report_row(config, workdir: str, objective, summary: dict) -> str:
  """Appends this run's row to `<report.dir>/report.json` (report.dir relative to the
  workdir: "." the workdir, ".." a pipeline's root)."""
  from kt_jax.eval import report
  from kt_jax.train import model_out
  from kt_jax.convert import kt_format
  report_dir = config.report.dir
  if not paths.is_remote(report_dir) and not report_dir.startswith("/"):
    report_dir = paths.absolute(paths.join(workdir, report_dir))
  module, variables = kt_format.load(paths.join(workdir, model_out.MODEL_DIR))
  size = objective.data_spec.image_size
  pre = report.pretraining_compute(config.backbone.path)
  own = report.stage_compute(workdir) or {"images": None, "flops": None}
  if summary.get("probe") is not None:  # lp_ft: the probe phase is finetuning compute too
    probe = report.stage_compute(paths.join(workdir, PROBE_DIR)) or {}
    own = {k: (own.get(k) or 0) + (probe.get(k) or 0) for k in ("images", "flops")}
  row = {
      "method": config.report.method or f"finetune ({config.finetune.mode})",
      "teacher": config.report.teacher, "transfer_set": config.report.transfer_set,
      "student": config.report.student or config.backbone.path or config.backbone.name,
      "task": summary["task"], "labels_per_class": config.data.labels_per_class,
      "metric": summary["metric"], "val": summary["val"], "test": summary["test"],
      "student_params": report.params_count(variables),
      "student_flops": report.forward_flops(module, variables, size),
      "pretrain_images": pre["images"], "pretrain_flops": pre["flops"],
      "finetune_images": own["images"], "finetune_flops": own["flops"],
      "workdir": paths.absolute(workdir)}
  report.append_row(report_dir, row)
  return paths.join(report_dir, report.JSON_FILE)
