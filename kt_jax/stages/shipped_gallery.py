"""The `shipped_gallery` stage: a mixed gallery from the shipped data, written as webdataset
tar shards in `<workdir>/shards/` (the layout img2dataset writes), to try retrieval without a
download: natural-image crops of the shipped photos, foolbox's samples (ImageNet, CIFAR,
Fashion-MNIST, MNIST) and MNIST digits, shuffled together. Each sample's JSON holds its
"kind" and, for digits, its "label", which the retrieve stage scores precision against.
The digits of the few-shot MNIST task (`exclude_*`, as the eval `mnist` task draws them) are
never in the gallery, so a query cannot retrieve itself.
"""
import os

import numpy as np

from kt_jax.data import shipped, tar_shards
from kt_jax.stages import checks

SHARDS = "shards"


def validate(config) -> None:
  checks.check_positive(config, "images_per_shard", "pool_crop_size")
  checks.check_non_negative(config, "pool_images", "mnist_digits")


def samples(config) -> list[dict]:
  found = []
  for image in shipped.unlabelled_pool(config.pool_images, config.pool_crop_size, config.seed):
    found.append({"image": image, "json": {"kind": "photo"}})
  if config.foolbox:
    for kind in shipped.FOOLBOX_KINDS:
      images, labels = shipped.foolbox_images(kind)
      for image, label in zip(images, labels):
        meta = {"kind": "mnist", "label": int(label)} if kind == "mnist" else {
            "kind": f"foolbox_{kind}"}
        found.append({"image": image, "json": meta})
  _, test = shipped.mnist_fewshot_indices(config.exclude_labels_per_class,
                                          config.exclude_test_per_class, config.exclude_seed)
  train, _ = shipped.mnist_fewshot_indices(config.exclude_labels_per_class,
                                           config.exclude_test_per_class, config.exclude_seed)
  digits, labels = shipped.mnist_digits()
  pool = np.setdiff1d(np.arange(len(digits)), np.concatenate([train, test]))
  chosen = np.random.default_rng(config.seed).choice(pool, config.mnist_digits, replace=False)
  for i in chosen:
    found.append({"image": np.repeat(digits[i][..., None], 3, -1),
                  "json": {"kind": "mnist", "label": int(labels[i]), "mnist_index": int(i)}})
  order = np.random.default_rng(config.seed + 1).permutation(len(found))
  return [dict(found[j], key=f"{n:06d}") for n, j in enumerate(order)]


def run(config, workdir: str) -> dict:
  gallery = samples(config)
  written = tar_shards.write_shards(gallery, os.path.join(workdir, SHARDS),
                                    config.images_per_shard)
  kinds, counts = np.unique([s["json"]["kind"] for s in gallery], return_counts=True)
  print(f"\nshipped_gallery: {len(gallery)} images in {len(written)} shards "
        f"({', '.join(f'{k} {c}' for k, c in zip(kinds, counts))})")
  return {"images": len(gallery), "shards": len(written), "path": os.path.join(workdir, SHARDS),
          "kinds": {str(k): int(c) for k, c in zip(kinds, counts)}}
