"""Retrieval-augmented transfer set for 10-shot MNIST from a mixed gallery of 5,100 images.

  nice -n 10 python -m kt_jax.main --config=configs/retrieve_mnist.py \\
      --workdir=workdirs/retrieve_mnist

Stages (each in its own subfolder; a rerun skips finished ones and resumes the embedding):
  gallery   3,000 natural-image crops + 100 foolbox samples + 2,000 MNIST digits, shuffled,
            as tar shards of 500 (none of the few-shot digits)
  embed     efficientnet_lite0 features (64 px) of every image, whole (crops.grid=2 adds tiles)
  index     exact inner-product faiss index (small gallery)
  ivfpq     an IVF-PQ index of the same vectors (32 x 6 bits), for its recall@10 vs exact
  balanced  the 100 labelled digits query the gallery; 20 distinct images each, round-robin
  topk      the ablation: the 2,000 globally most similar (query, crop) pairs
Each retrieve summary reports the share of retrieved images that are digits and of the
query's class.

`:own` curates from your own gallery (tar shards, an image folder or ArrayRecord) for your own
few-shot images (one subfolder per class): no gallery stage, no IVF-PQ comparison.

  python -m kt_jax.main --config=configs/retrieve_mnist.py:own --workdir=workdirs/own \
      --config.stages.embed.gallery.path=/data/shards \
      --config.stages.balanced.queries.path=/data/fewshot
"""
import ml_collections

from kt_jax import config_defaults


def get_config(variant: str = ""):
  gallery = config_defaults.shipped_gallery_config()

  embed = config_defaults.embed_config()
  embed.teacher.path = "efficientnet_lite0"
  embed.image_size = 64             # small, so 5,100 images embed in minutes on a shared CPU
  embed.gallery.path = "{stage:gallery}/shards"
  embed.crops.grid = 0              # the whole image only; try 2 for 2x2 tiles as well

  exact = config_defaults.index_config()
  exact.embeddings = "{stage:embed}"

  ivfpq = config_defaults.index_config()
  ivfpq.embeddings = "{stage:embed}"
  ivfpq.kind, ivfpq.pq_m, ivfpq.pq_bits, ivfpq.nprobe = "ivfpq", 32, 6, 8

  def retrieve(is_balanced):
    r = config_defaults.retrieve_config()
    r.embeddings, r.index = "{stage:embed}", "{stage:index}"
    r.quota, r.balanced, r.report_kind = 20, is_balanced, "mnist"
    r.query_crops.grid = 0          # whole digits as queries, like the gallery
    return r

  c = ml_collections.ConfigDict()
  c.stage = "pipeline"
  c.stages = ml_collections.ConfigDict({
      "gallery": gallery, "embed": embed, "index": exact, "ivfpq": ivfpq,
      "balanced": retrieve(True), "topk": retrieve(False)})
  c.order = ("gallery", "embed", "index", "balanced", "topk", "ivfpq")
  if variant == "own":
    embed.gallery.path = ""
    embed.image_size, embed.crops.grid = 0, 2
    balanced = retrieve(True)
    balanced.queries.source, balanced.report_kind = "image_folder", ""
    balanced.query_crops.grid = 2
    c.stages = ml_collections.ConfigDict({"embed": embed, "index": exact, "balanced": balanced})
    c.order = ("embed", "index", "balanced")
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}: '' or 'own'.")
  return c
