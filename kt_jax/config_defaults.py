"""The keys every config has, with their defaults; config files start from these.

One schema for every stage: the same key means the same thing wherever it appears
(`teacher.path`, `eval.tasks`, `eval.knn_k`, `eval.feature`, ...), and a stage's config holds
only keys that stage reads, so an option it would ignore is an unknown key. Configs live in
`configs/*.py` (each with a docstring giving its exact command) and only change what differs.
ml_collections refuses unknown keys, so a typo on the command line (`--config.batch_szie=8`)
fails before any compute.
"""
import ml_collections


def teacher_config(path: str = "") -> ml_collections.ConfigDict:
  """`path`: a checkpoint file or directory, a kt_jax model directory, a shipped model's name
  (`efficientnet_lite0`) or `random:<registered model>`."""
  return ml_collections.ConfigDict({"path": path})


def eval_config(tasks: tuple = ()) -> ml_collections.ConfigDict:
  """How frozen features are scored: DINO's weighted kNN and a linear probe per task."""
  c = ml_collections.ConfigDict()
  # Shipped tasks (mnist, photos, cifar10) and/or your own data: "folder:/data/x",
  # "arrayrecord:/data/x", "tar:/data/x", "NAME=folder:/data/x" (see kt_jax/data/tasks.py).
  c.tasks = tuple(tasks)
  c.task_options = ml_collections.ConfigDict({
      "mnist": {"labels_per_class": 10, "test_per_class": 50},
      "photos": {"crops_per_photo": 16, "crop_size": 96},
      "cifar10": {}})
  c.seed = 0                       # which images each task draws
  c.batch_size = 128               # feature extraction
  c.knn_k = 20
  c.knn_temperature = 0.07
  c.feature = "x_norm_clstoken"    # or "mean_patchtoken", or "cls+mean_patch"
  c.probe = "auto"                 # linear probe: auto (sklearn up to 10k train rows, else the
                                   # on-device optax probe), sklearn or optax
  c.workers = 0                    # grain processes decoding the images of tasks on disk
  return c


def frozen_eval_config() -> ml_collections.ConfigDict:
  """The `frozen_eval` stage: a frozen model's features scored on labelled tasks."""
  c = ml_collections.ConfigDict()
  c.stage = "frozen_eval"
  c.seed = 0
  c.teacher = teacher_config()
  c.image_size = 0                 # 0: the model's native input size
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.eval = eval_config()
  c.contact_sheet = ml_collections.ConfigDict({"rows": 8, "k": 6})  # nearest neighbours drawn
  return c


def training_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = ""
  c.seed = 0
  c.batch_size = 1024          # global, over all devices and processes
  c.total_steps = 0            # 0: derived from `epochs`
  c.epochs = 0.0
  c.image_size = 224
  c.compute_dtype = "float32"  # or "bfloat16": student and teacher compute, params stay fp32
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 0       # 0: evaluate at the end only
  c.keep_checkpoints = 3
  c.stop_after_steps = 0       # >0: end this invocation after N steps, resumable
  c.log_sample_ids = False     # write the sample ids of every step to sample_ids.jsonl
  c.async_checkpoints = True
  c.mesh = ml_collections.ConfigDict({"data": -1})  # axis -> size; -1: remaining devices
  # (regex on 'params/student/blocks_0/attn/qkv/kernel'-style paths, spec per dimension or
  # "fsdp" for the largest divisible dimension); unmatched leaves are replicated.
  c.sharding_rules = ()
  c.ema_decay = 0.0
  c.init_from = ""             # weight inheritance: a checkpoint to initialise the student from

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 5e-4
  c.optimizer.lr_base_batch = 512  # DeiT's linear scaling: lr * batch / 512; 0 disables
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.warmup_init = 1e-6
  c.optimizer.min_lr = 1e-5
  c.optimizer.weight_decay = 0.05
  c.optimizer.no_decay_names = ("pos_embed", "cls_token", "mask_token", "register_tokens")
  c.optimizer.grad_clip_norm = 0.0
  c.optimizer.layer_decay = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8

  c.data = ml_collections.ConfigDict()
  c.data.source = "image_folder"   # image_folder | arrayrecord | shipped_pool | tar_shards
                                   # | manifest
  c.data.path = ""
  c.data.split = "train"
  c.data.pool_size = 512
  c.data.pool_crop_size = 160
  c.data.pool_mnist = 0  # shipped_pool: + this many unlabelled MNIST digits (none from the
                         # eval `mnist` task's test split)
  c.data.holdout = 0     # proxy images kept out of training, to measure generalisation on
  c.data.workers = 0
  c.data.repeated_augmentation = 1
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.augment = ml_collections.ConfigDict({
      "scale": (0.08, 1.0), "hflip": 0.5, "randaugment": "rand-m9-mstd0.5-inc1",
      "random_erasing": 0.25})

  c.eval = eval_config()
  c.eval.before_training = True    # also score the freshly initialised student
  return c


def proteus_config() -> ml_collections.ConfigDict:
  c = training_config()
  c.stage = "proteus"
  c.teacher = teacher_config()
  # overrides: any constructor argument of the model, e.g.
  # --config.student.overrides.drop_path_rate=0.1 (kt_jax.cli adds keys the dict lacks).
  c.student = ml_collections.ConfigDict({"name": "vit_small_patch14",
                                         "overrides": ml_collections.ConfigDict()})
  c.proteus = ml_collections.ConfigDict({
      "lambda_token": 1.0, "lambda_fea": 1.0, "lambda_patch": 1.0,
      "mask_probability": 0.5, "mask_ratio": (0.5,), "mask_first_n": True,
      # none (official) | variance | dim | whiten; see kt_jax/objectives/target_norm.py
      "target_norm": "none",
      # default (official: PyTorch's init) | ridge: heads start at the ridge regression of the
      # teacher on the random student's tokens (see Proteus.ridge_heads)
      "head_init": "default", "head_init_alpha": 0.01,
      # the first N training images, unaugmented: what target_norm and head_init fit on
      "fit_images": 256})
  c.data.holdout = 64  # R^2 of the heads against the teacher on these, at every evaluation
  return c



def embed_config() -> ml_collections.ConfigDict:
  """The `embed` stage: a gallery's images at crop level -> L2-normalised vectors."""
  c = ml_collections.ConfigDict()
  c.stage = "embed"
  c.teacher = teacher_config()     # the embedding model
  c.image_size = 0                 # 0: the model's native input size
  c.embedding = "x_norm_clstoken"  # the model output embedded, or "mean_patchtoken"
  c.batch_size = 64                # crops per model call, over this process's devices
  c.gallery = ml_collections.ConfigDict({
      "source": "tar_shards",      # tar_shards | image_folder | arrayrecord
      "path": "", "split": "train",
      "images_per_unit": 1000})    # folder/ArrayRecord: images per embedding shard
  # The crop set: the whole image, a grid x grid tiling, square boxes of each scale.
  c.crops = ml_collections.ConfigDict({"whole": True, "grid": 2, "scales": ()})
  c.stop_after_shards = 0          # >0: end this invocation after N units, resumable
  return c


def index_config() -> ml_collections.ConfigDict:
  """The `index` stage: a faiss index over the embed stage's vectors."""
  c = ml_collections.ConfigDict()
  c.stage = "index"
  c.seed = 0
  c.embeddings = ""                # the embed stage's workdir
  c.kind = "flat"                  # flat (exact) | ivfpq | hnsw
  c.nlist = 0                      # ivfpq lists; 0: about 4 sqrt(N)
  c.pq_m, c.pq_bits, c.opq = 16, 8, False  # ivfpq: sub-quantisers (bytes/vector), OPQ rotation
  c.hnsw_m = 32
  c.train_size = 100_000           # vectors sampled to train ivfpq
  c.nprobe, c.ef_search = 16, 64   # search accuracy (ivf lists probed, hnsw beam)
  c.recall_queries, c.recall_k = 1000, 10  # recall@k against exact search
  return c


def retrieve_config() -> ml_collections.ConfigDict:
  """The `retrieve` stage: few-shot labelled images -> a query-balanced transfer set."""
  c = ml_collections.ConfigDict()
  c.stage = "retrieve"
  c.embeddings = ""                # the embed stage's workdir (its model and crops are reused)
  c.index = ""                     # the index stage's workdir
  # The labelled images whose crops are the queries: the shipped 10-shot MNIST digits
  # ("mnist_fewshot") or a folder with one subfolder per class ("image_folder", path).
  c.queries = ml_collections.ConfigDict({"source": "mnist_fewshot", "path": "",
                                         "labels_per_class": 10, "seed": 0})
  c.query_crops = ml_collections.ConfigDict({"whole": True, "grid": 0, "scales": ()})
  c.quota = 10                     # gallery crops per query
  c.search_k = 0                   # neighbours searched per query; 0: 10 x quota
  c.balanced = True                # False: plain top-K over all (query, crop) pairs
  c.distinct_images = True         # a gallery image taken for one query is skipped for others
  c.duplicate_threshold = 0.95     # cosine above which a crop duplicates one taken; 1: off
  c.report_kind = ""               # gallery meta "kind" whose share is reported (e.g. mnist)
  c.contact_sheet = ml_collections.ConfigDict({"rows": 10, "k": 8})
  return c


def shipped_gallery_config() -> ml_collections.ConfigDict:
  """The `shipped_gallery` stage: a mixed gallery of shipped images as tar shards."""
  c = ml_collections.ConfigDict()
  c.stage = "shipped_gallery"
  c.seed = 0
  c.pool_images = 3000             # natural-image crops of the shipped photos
  c.pool_crop_size = 96
  c.foolbox = True                 # + foolbox's 100 samples (20 of them MNIST digits)
  c.mnist_digits = 2000            # + MNIST digits, none of the few-shot task's
  c.images_per_shard = 500
  # The few-shot MNIST task kept out of the gallery (as the eval `mnist` task draws it).
  c.exclude_labels_per_class, c.exclude_test_per_class, c.exclude_seed = 10, 50, 0
  return c
