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
  # Segmentation (finetune): masks scored at mask_size x mask_size, the logits bilinearly
  # upsampled to it, so that models at different input sizes are scored on the same labels
  # (0: at the input size).
  c.mask_size = 0
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
  c.data.pool_digit_seg = 0  # shipped_pool: + this many unlabelled digit-segmentation images
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
      # auto: a CLIP/SigLIP teacher (image-level objective) needs lambda_fea = lambda_patch
      # = 0, an error says so; yes: distil any teacher's patch tokens (stages/proteus.py)
      "patch_targets": "auto",
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


def _transfer_set(c) -> None:
  """A distillation's transfer set: the shipped pool by default (natural crops; `pool_mnist`
  digits or `pool_digit_seg` images for an in-domain set), or `data.path`. No labels."""
  del c.init_from, c.eval
  c.data.source = "shipped_pool"
  # The labelled task whose test images the shipped in-domain pools leave out (mnist:
  # labels_per_class, test_per_class and seed of the finetune's split; digit_seg:
  # test_per_class, max_digits and seed).
  c.data.exclude_test_of = ml_collections.ConfigDict({
      "labels_per_class": 10, "test_per_class": 50, "max_digits": 2, "seed": 0})


def distill_task_config() -> ml_collections.ConfigDict:
  """The `distill_task` stage: a finetuned VFM's predictions on an unlabelled transfer set."""
  c = training_config()
  c.stage = "distill_task"
  c.teacher = teacher_config()     # a finetune stage's model/ (backbone + head)
  c.teacher.image_size = 0         # 0: the student's image_size; else the same view, resized
  c.teacher.num_classes = 0        # for random:<model> teachers only (benchmarks)
  # Exactly one of `name` (a registered model, initialised from the seed) and `path` (a model
  # whose backbone initialises the student: e.g. the shipped `mobilenet_v2`, its ImageNet
  # weights, a checkpoint or a stage's model/), as `finetune`'s backbone.
  c.student = ml_collections.ConfigDict({
      "name": "mobilenet_v2", "path": "", "overrides": ml_collections.ConfigDict(),
      "num_classes": 0})           # 0: the teacher's; anything else must equal it
  c.distill = ml_collections.ConfigDict({
      "temperature": 1.0,          # Hinton's T (the loss is scaled by T^2)
      # mixup / CutMix between transfer images (timm's batch mode; 0 disables each); the
      # teacher labels the mixed image, so no label is mixed
      "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_switch_prob": 0.5})
  _transfer_set(c)
  return c


def distill_feature_config() -> ml_collections.ConfigDict:
  """The `distill_feature` stage: the student's features regress the VFM's (task-agnostic)."""
  c = training_config()
  c.stage = "distill_feature"
  c.teacher = teacher_config()     # any backbone (a VFM checkpoint, a shipped model, model/)
  c.teacher.image_size = 0         # 0: the student's image_size; else the same view, resized
  c.student = ml_collections.ConfigDict({"name": "mobilenet_v2",
                                         "overrides": ml_collections.ConfigDict()})
  c.distill = ml_collections.ConfigDict({
      "loss": "l2",                # l2 (MSE) | cosine (1 - cosine similarity per token)
      "lambda_cls": 1.0,           # class token / pooled feature
      "lambda_patch": 1.0,         # patch tokens; a CNN's map is resized to the teacher's grid
      # default (PyTorch's init) | ridge: heads start at the ridge regression of the teacher
      # on the random student's features (see objectives/feature_regression.ridge_heads)
      "head_init": "ridge", "head_init_alpha": 0.01, "fit_images": 256})
  _transfer_set(c)
  return c


def generative_training_config() -> ml_collections.ConfigDict:
  """What the `vqgan` and `latent_transformer` stages share: shipped natural images in
  [-1, 1] (mean = std = 0.5), mild augmentation, Adam (taming's betas), a held-out set."""
  c = training_config()
  c.image_size = 32
  c.optimizer.update(lr=1e-4, lr_base_batch=0, warmup_init=0.0, min_lr=1e-4,
                     weight_decay=0.0, b1=0.5, b2=0.9)
  c.data.source = "shipped_pool"
  c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
  c.data.augment = ml_collections.ConfigDict({
      "scale": (0.5, 1.0), "hflip": 0.5, "randaugment": "", "random_erasing": 0.0})
  c.data.holdout = 64          # reconstruction scores and contact sheets on these
  c.eval = eval_config()
  c.eval.before_training = True
  c.samples = ml_collections.ConfigDict({"rows": 8, "temperature": 1.0, "top_k": 0,
                                         "top_p": 1.0})
  return c


def vqgan_config() -> ml_collections.ConfigDict:
  """The `vqgan` stage: a VQGAN with a PatchGAN, taming's VQLPIPSWithDiscriminator loss."""
  c = generative_training_config()
  c.stage = "vqgan"
  c.vqgan = ml_collections.ConfigDict({"name": "vqgan_tiny",
                                       "overrides": ml_collections.ConfigDict()})
  c.discriminator = ml_collections.ConfigDict({"ndf": 64, "n_layers": 3, "norm": "batch"})
  c.loss = ml_collections.ConfigDict({
      # The perceptual network (NOT LPIPS: see kt_jax/objectives/perceptual.py); "" = none.
      "perceptual_network": "efficientnet_lite0", "perceptual_layers": (),
      "perceptual_image_size": 0, "perceptual_weight": 1.0,
      "codebook_weight": 1.0, "disc_weight": 0.8, "disc_factor": 1.0,
      "disc_start": 0, "adaptive_weight": True})
  # Per update group, keys over `optimizer` (e.g. optimizers.discriminator.lr).
  c.optimizers = ml_collections.ConfigDict({"generator": {}, "discriminator": {}})
  del c.samples
  return c


def latent_transformer_config() -> ml_collections.ConfigDict:
  """The `latent_transformer` stage: next-index prediction over a frozen VQGAN's codes."""
  c = generative_training_config()
  c.stage = "latent_transformer"
  c.vqgan_path = ""            # a kt_jax model directory (a vqgan stage's model/) or workdir
  c.transformer = ml_collections.ConfigDict({"name": "latent_transformer_tiny",
                                             "overrides": ml_collections.ConfigDict()})
  c.codes = ml_collections.ConfigDict({"hflip": True})  # also encode the mirror images
  c.optimizer.update(lr=1e-3, min_lr=1e-5, b1=0.9, b2=0.95, weight_decay=0.01,
                     warmup_steps=20)
  return c


def finetune_config() -> ml_collections.ConfigDict:
  """The `finetune` stage: backbone + task head trained on a few-shot labelled split."""
  c = training_config()
  c.stage = "finetune"
  del c["init_from"]               # the backbone is `backbone.path`
  c.batch_size = 32
  c.image_size = 0                 # 0: the backbone's native input size
  c.checkpoint_every_steps = 500
  c.eval_every_steps = 0           # val and test are scored at the end (and every N steps)
  c.optimizer.lr = 1e-3
  c.optimizer.lr_base_batch = 0
  c.optimizer.warmup_init = 0.0
  c.optimizer.min_lr = 0.0
  c.optimizer.weight_decay = 1e-4
  c.optimizer.freeze = ()          # regexes on parameter paths given zero updates
                                   # (linear_probe adds "^model/backbone/")
  c.optimizer.name = "adamw"       # adamw | sgd (torch's SGD: L2 decay added to the gradient)
  c.optimizer.momentum = 0.9       # sgd
  c.optimizer.nesterov = False     # sgd
  c.optimizer.schedule = "cosine"  # cosine | multistep (lr x decay_factor at each boundary)
  c.optimizer.decay_boundaries = (0.3, 0.6, 0.9)  # multistep: fractions of total_steps
  c.optimizer.decay_factor = 0.1
  # Exactly one: `path` (checkpoint, model directory, "{stage:NAME}/model", shipped model,
  # random:<name>) or `name` (a registered model initialised from the seed). `overrides`:
  # constructor arguments of the backbone (e.g. drop_path_rate). A task model as `path` gives
  # its backbone, and its head when the class count matches and keep_head is True.
  c.backbone = ml_collections.ConfigDict({"path": "", "name": "", "keep_head": True,
                                          "overrides": ml_collections.ConfigDict()})
  # feature: x_norm_clstoken (the pooled feature for CNNs) or cls+mean_patch; hidden: a 3x3
  # conv of this width before a segmentation head's linear layer (0: linear only);
  # skip_stride: a segmentation head that also reads the CNN's finer map at this stride
  # (4, 8, ...; DeepLabv3+'s decoder, needs hidden; 0: the final map only; see
  # models/classifier.Segmenter).
  c.head = ml_collections.ConfigDict({"feature": "x_norm_clstoken", "hidden": 0,
                                      "skip_stride": 0})
  c.finetune = ml_collections.ConfigDict({
      "mode": "full",              # full | linear_probe | lp_ft
      "label_smoothing": 0.0,
      # segmentation: none | median_frequency (per-class loss weights from the labelled
      # masks' pixel frequencies, Eigen & Fergus 2015)
      "class_weights": "none",
      "probe_steps": 0,            # lp_ft: steps of the linear-probe phase (in <workdir>/probe)
      "probe_lr": 1e-2})           # lp_ft: its learning rate
  c.data = ml_collections.ConfigDict()
  c.data.task = "mnist"            # mnist | photos | folder:PATH | NAME=folder:PATH | a
                                   # registered (e.g. segmentation) task: kt_jax/data/fewshot.py
  c.data.task_options = ml_collections.ConfigDict({
      "mnist": {"test_per_class": 50}, "photos": {"crops_per_photo": 24, "crop_size": 96}})
  c.data.labels_per_class = 10     # labelled images per class drawn from the train split
                                   # (0: all of them)
  c.data.val_per_class = 2         # of those, per class, kept for validation
  c.data.split_seed = 0            # which images are drawn
  c.data.train_images = ""         # a rerepresent stage's workdir: train on its images of the
                                   # same train split (ids and labels checked); val and test
                                   # stay the task's originals (IRF's delivering stage)
  c.data.workers = 0
  c.data.mean = ()                 # () : the backbone's own input normalisation
  c.data.std = ()
  c.data.crop_pct = 0.875          # classification eval: resize to size / crop_pct, centre crop
  # ratio: the random crop's aspect-ratio range ((1, 1): square crops)
  c.data.augment = ml_collections.ConfigDict({
      "scale": (0.5, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.5, "randaugment": "",
      "random_erasing": 0.0})
  c.eval = eval_config()            # the one eval schema; finetune reads eval.batch_size and
  c.eval.tasks = ()                # scores its own val/test splits (no kNN/probe tasks)
  c.eval.batch_size = 64
  # Report row (kt_jax/eval/report.py): dir relative to the workdir ("." itself, ".." a
  # pipeline's root; "" writes none); method/teacher/student/transfer_set label the row.
  c.report = ml_collections.ConfigDict({"dir": ".", "method": "", "teacher": "", "student": "",
                                        "transfer_set": ""})
  return c


def rerepresent_config() -> ml_collections.ConfigDict:
  """The `rerepresent` stage (IRF's assembling): a few-shot task's train images encoded and
  decoded by a frozen VQGAN, written as a labelled image dataset `finetune` trains on."""
  c = ml_collections.ConfigDict()
  c.stage = "rerepresent"
  c.vqgan_path = ""                # a vqgan stage's workdir or model/ (any kt_jax VQGAN dir)
  c.image_size = 0                 # 0: the VQGAN's own training resolution
  c.batch_size = 64                # images per VQGAN call
  c.contact_sheet_rows = 8
  # The few-shot split exactly as the finetune stage draws it (same keys, same meaning).
  data = finetune_config().data
  c.data = ml_collections.ConfigDict({k: data[k] for k in (
      "task", "task_options", "labels_per_class", "val_per_class", "split_seed")})
  return c


def select_config() -> ml_collections.ConfigDict:
  """The `select` stage: the best of several finished stages by a summary value (a sweep's
  grid points chosen on the validation split); its `model/` links to the winner's."""
  c = ml_collections.ConfigDict()
  c.stage = "select"
  c.candidates = ()                # workdirs, e.g. ("{stage:deliver_lr0}", "{stage:deliver_lr1}")
  c.key = "val"                    # the summary.json value maximised
  # The winner's report row, copied from the candidates' report (their report.dir, relative
  # to the candidate's workdir) into report.dir (relative to this workdir) under `method`.
  c.candidates_report = "../sweep"
  c.report = ml_collections.ConfigDict({"dir": "..", "method": ""})
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


def domain_gap_config() -> ml_collections.ConfigDict:
  """The `domain_gap` stage: FD between a reference image set and other sets (folders or the
  shipped upstream crops) in one frozen model's features (One-to-Transfer-All's check)."""
  c = ml_collections.ConfigDict()
  c.stage = "domain_gap"
  c.model = "efficientnet_lite0"   # the feature model (anything convert.load_pretrained reads)
  c.image_size = 0                 # 0: the model's own input size
  c.batch_size = 64
  c.reference = ""                 # a folder, e.g. "{stage:digg}/originals"
  c.sets = ml_collections.ConfigDict()  # name -> folder or "upstream"
  c.data = ml_collections.ConfigDict({"pool_size": 0, "pool_crop_size": 32})  # "upstream"
  c.report = ml_collections.ConfigDict({"dir": "..", "reference_label": ""})
  return c


def digg_generate_config() -> ml_collections.ConfigDict:
  """The `digg_generate` stage: each few-shot train image, partly masked on the VQGAN's code
  grid and completed N times by the latent transformer (DIGG, One-to-Transfer-All)."""
  c = ml_collections.ConfigDict()
  c.stage = "digg_generate"
  c.seed = 0                       # with (image, sample): each sample's key and box
  c.vqgan_path = ""                # a vqgan stage's workdir or any kt_jax VQGAN directory
  c.transformer_path = ""          # a latent_transformer stage's workdir (or its model/)
  c.image_size = 32                # the VQGAN's input: the grid is image_size / downsampling
  c.samples_per_image = 8          # N
  c.batch_size = 64                # (image, sample) pairs completed per sampler call
  c.stop_after_batches = 0         # >0: end this invocation after N batches, resumable
  # bottom | right (half of the grid masked) | box (sides box_min..box_max of the grid's)
  c.mask = ml_collections.ConfigDict({"kind": "bottom", "box_min": 0.25, "box_max": 0.5})
  c.sampling = ml_collections.ConfigDict({"temperature": 1.0, "top_k": 0, "top_p": 1.0})
  # The downstream images: the train split `finetune` draws with the same values.
  c.data = ml_collections.ConfigDict()
  c.data.task = "mnist"
  c.data.task_options = ml_collections.ConfigDict({
      "mnist": {"test_per_class": 50}, "photos": {"crops_per_photo": 24, "crop_size": 96}})
  c.data.labels_per_class = 10
  c.data.val_per_class = 2
  c.data.split_seed = 0
  c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # the VQGAN's [-1, 1]
  c.contact_sheet = ml_collections.ConfigDict({"rows": 10, "samples": 8})
  return c
