"""Frozen, validated specs for every step of a study; their stable hash is the cache key.

Each spec validates itself on construction and raises `SpecError` with one message that
the CLI and the UI show as is.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from otcore.cache_key import CacheKey
from otcore.datafiles import DataError, dataset_fingerprint
from otcore.errors import UserError


class SpecError(UserError):
    """A setting that cannot be used; the message is meant for the user."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


def not_keyed(default: Any) -> Any:
    """A spec field that does not change results (paths, flags) and so stays out of the cache key."""
    return field(default=default, metadata={"keyed": False}, compare=False)


def keyed_when_set(default: Any, init: bool = True) -> Any:
    """A spec field keyed only where it differs from its default, so adding it leaves every existing key as it was.

    init=False: a field the spec derives itself (e.g. a file's content hash)."""
    return field(default=default, init=init, metadata={"keyed": "when set"})


def spec_dict(spec: Any) -> dict[str, Any]:
    """The keyed fields of a spec as a JSON-able dict, tagged with the spec's type."""
    if not dataclasses.is_dataclass(spec):
        return spec  # plain JSON-able values (e.g. the keys of a step's inputs)
    out: dict[str, Any] = {"_type": type(spec).__name__}
    for f in dataclasses.fields(spec):
        keyed, value = f.metadata.get("keyed", True), getattr(spec, f.name)
        if keyed is True or (keyed == "when set" and value != f.default):
            out[f.name] = spec_dict(value) if dataclasses.is_dataclass(value) else value
    return out


CACHE_FORMAT = 5  # bump when what a step stores changes, so old entries are not misread
#                  (4: rows and tensors by method id; 5: retraining keeps the best on a validation part, stores its curve)


def spec_hash(kind: str, *specs: Any) -> CacheKey:
    """Stable hex digest of a step kind and the specs that determine its result (a str that keeps its settings)."""
    payload = json.dumps([CACHE_FORMAT, kind] + [spec_dict(s) for s in specs], sort_keys=True, default=list)
    return CacheKey(json.loads(payload))  # the JSON form, as a record stores and reads it back: the same digest


# The registries' names, torch-free so that validating a spec (and the CLI's choices) never
# imports torch; tests check they equal otcore.data.list_datasets() and otcore.models.list_models().
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
ARCHITECTURES = ("mlpnet", "mlpnet_half", "mlpnet_doub", "vgg11_nobias", "vgg11_half_nobias", "vgg11_doub_nobias",
                 "vgg11_quad_nobias", "vgg_tiny_nobias", "vgg_tiny_doub_nobias", "resnet18_nobias_nobn",
                 "resnet_tiny_nobias_nobn", "vit_tiny", "vit_tiny_doub")
DEVICE_CHOICES = ("auto", "cpu", "cuda")  # resolved by otcore.device.resolve_device
# Architectures from outside the zoo: 'torchvision:NAME', 'timm:NAME', and on the command line only
# 'file:PATH.py:NAME' (it runs the user's own code; the web app never offers it). otcore.external_models builds them.
ARCH_FAMILIES = ("torchvision", "timm", "file")
WEB_ARCH_FAMILIES = ("torchvision", "timm")
# Each dataset's image shape and classes as its loader gives them: what an outside architecture's traced
# structure is keyed by (known without loading the data; tests check them against the loaders).
DATASET_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
                  "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
MAX_MODEL_FILE = 16 * 2**20  # bytes of a file: architecture's source, hashed into its keys


def arch_family(arch: str) -> str:
    """'zoo' for a registered name, else the family before the first ':' ('torchvision', 'timm', 'file')."""
    family, colon, _ = arch.partition(":")
    return family if colon and family in ARCH_FAMILIES else "zoo"

# Ranges a study can use; beyond them a value is a typo (or inf/NaN, which every comparison refuses),
# and would only produce NaN networks or allocate without bound. The README's CLI section lists them.
MAX_EPOCHS = 1000
MAX_BATCH = 100_000  # examples per batch
MAX_SAMPLES = 100_000  # activation samples
MAX_SEED = 2**31
MAX_WEIGHT = 1e6  # per-parent averaging weights and their sum (only their ratios matter)
MAX_PARENTS = 1000  # bound of an anchor index before the parents are counted
MAX_LAMBDA = 100.0  # perturbation along a unit eigenvector


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, where its files are, and (derived on construction) what they hold."""

    name: str = "digits"  # registry name, one of DATASETS
    root: str | None = not_keyed(None)  # torchvision root folder for the real datasets
    download: bool = not_keyed(False)  # let torchvision download into root (needs internet)
    # Content hash of the files the loader reads (otcore.datafiles), so every key holds the data, not
    # its path; '' while a real dataset has no root (loading it then asks for one).
    fingerprint: str = field(default="", init=False)

    def __post_init__(self) -> None:
        _check(self.name in DATASETS, f"unknown dataset '{self.name}'; choose one of {', '.join(DATASETS)}")
        if self.name != "digits" and not self.root:
            return
        try:
            object.__setattr__(self, "fingerprint", dataset_fingerprint(self.name, self.root, self.download))
        except DataError as err:
            raise SpecError(str(err)) from None


@dataclass(frozen=True)
class ModelSpec:
    """Which architecture: a zoo name, 'torchvision:NAME', 'timm:NAME' or 'file:PATH.py:NAME'."""

    arch: str = "mlpnet"  # one of ARCHITECTURES, or family:NAME (ARCH_FAMILIES)
    # file: only: sha256 of the Python file defining the network, so every key changes when its code does.
    source: str = keyed_when_set("", init=False)

    def __post_init__(self) -> None:
        _check(isinstance(self.arch, str) and 0 < len(self.arch) <= 1000,
               "the architecture is a name of at most 1000 characters")
        family = arch_family(self.arch)
        if family == "zoo":
            _check(self.arch in ARCHITECTURES, f"unknown architecture '{self.arch}'; choose one of "
                   f"{', '.join(ARCHITECTURES)}, or torchvision:NAME, timm:NAME, file:PATH.py:NAME")
        elif family == "file":
            object.__setattr__(self, "source", _model_file_digest(self.arch))
        else:
            from otcore.external_models import check_library_name  # imports torch: only for these names

            try:
                check_library_name(self.arch)
            except UserError as err:
                raise SpecError(str(err)) from None


def _model_file_digest(arch: str) -> str:
    """The sha256 of the file of a 'file:PATH.py:NAME' architecture, after checking the name's form."""
    path, _, name = arch[len("file:"):].rpartition(":")
    _check(bool(path) and path.endswith(".py") and name.isidentifier(),
           f"'{arch}' must be file:PATH.py:NAME, NAME a class or function of that file")
    _check(os.path.isfile(path), f"the model file {path} does not exist (or is not a regular file)")
    try:
        with open(path, "rb") as handle:  # a regular file: opening it never blocks
            content = handle.read(MAX_MODEL_FILE + 1)
    except OSError as err:
        raise SpecError(f"cannot read the model file {path}: {err.strerror}") from None
    _check(len(content) <= MAX_MODEL_FILE, f"the model file {path} is over {MAX_MODEL_FILE >> 20} MiB")
    return hashlib.sha256(content).hexdigest()


def parse_classes(text: str) -> tuple[int, ...]:
    """'0, 2,4' -> (0, 2, 4): the class list of a 'labels' partition as typed in a form or on the CLI."""
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise SpecError(f"classes are whole numbers separated by commas, e.g. 0,2,4,6,8; got '{text}'") from None


PARTITIONS = ("iid", "labels", "personalized", "small_big")  # as the reference's --partition-type


@dataclass(frozen=True)
class TrainSpec:
    """How a network is trained (SGD with momentum, as the reference code)."""

    epochs: int = 10  # passes over the train split
    batch_size: int = 64  # examples per SGD step
    lr: float = 0.05  # SGD learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty
    seed: int = 0  # seeds initialisation and batch order
    partition: str = "iid"  # which part of the train split each parent sees: one of PARTITIONS
    partition_classes: tuple[int, ...] = ()  # 'labels': the first parent's classes (empty: the even ones)
    personal_class: int = 9  # 'personalized': the class only the first parent sees
    partition_fraction: float = 0.1  # 'personalized': share of the other classes the first parent also sees;
    #                                  'small_big': the first parent's share of the split
    partition_seed: int = 0  # seeds the shuffle of 'personalized' and 'small_big'
    part: int = 0  # which part this network trains on (0: the first parent's); set per parent

    def __post_init__(self) -> None:
        _check(self.partition in PARTITIONS, f"partition must be one of {PARTITIONS}, got '{self.partition}'")
        classes = tuple(int(c) for c in self.partition_classes)
        _check(all(0 <= c < 1000 for c in classes) and len(set(classes)) == len(classes),
               f"partition classes must be distinct class indices in [0, 1000), got {self.partition_classes}")
        _check(0 <= self.personal_class < 1000, f"personal class must be in [0, 1000), got {self.personal_class}")
        _check(0 <= self.partition_seed < MAX_SEED, f"partition seed must be in [0, 2**31), got {self.partition_seed}")
        _check(0.0 < self.partition_fraction < 1.0,
               f"partition fraction must be in (0, 1), got {self.partition_fraction}")
        _check(self.part >= 0, f"partition part must be >= 0, got {self.part}")
        _check(self.partition == "iid" or self.part < 2,
               f"partition '{self.partition}' splits the data between two parents; got part {self.part + 1}")
        # Fields a partition does not read are set to their defaults, so equal training shares one key.
        canonical = {"partition_classes": tuple(sorted(classes)) if self.partition == "labels" else (),
                     "personal_class": self.personal_class if self.partition == "personalized" else 9,
                     "partition_fraction": self.partition_fraction
                     if self.partition in ("personalized", "small_big") else 0.1,
                     "partition_seed": self.partition_seed if self.partition in ("personalized", "small_big") else 0,
                     "part": self.part if self.partition != "iid" else 0}
        for name, value in canonical.items():
            object.__setattr__(self, name, value)
        _check(0 <= self.epochs <= MAX_EPOCHS, f"epochs must be in [0, {MAX_EPOCHS}], got {self.epochs}")
        _check(1 <= self.batch_size <= MAX_BATCH, f"batch size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        _check(0 < self.lr <= 10, f"learning rate must be in (0, 10], got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(0 <= self.weight_decay <= 1, f"weight decay must be in [0, 1], got {self.weight_decay}")
        _check(0 <= self.seed < MAX_SEED, f"seed must be in [0, 2**31), got {self.seed}")


def check_partition_parents(spec: TrainSpec, n_parents: int) -> None:
    """Refuse a partition other than 'iid' for any number of parents but two (its parts are two)."""
    _check(spec.partition == "iid" or n_parents == 2,
           f"partition '{spec.partition}' splits the data between 2 parents; got {n_parents} seeds")


SCHEDULES = ("step", "cosine", "constant")


@dataclass(frozen=True)
class RetrainSpec:
    """How an already trained network is retrained: the fused net, pruned parents, the vanilla average.

    Not the from-scratch recipe: a trained network sits in a minimum that lr 0.05 throws it out of
    (the reference divides its lr by --retrain-lr-decay). Defaults chosen by bench/retrain_recipe.py over
    weak and strong starts (README, Retraining). Every retraining keeps the best state on a held-out
    validation part (otcore.train.retrain). Epochs live with the step that retrains
    (FusionSpec.finetune_epochs, PruneSpec.retrain_epochs).
    """

    lr: float = 0.001  # SGD learning rate at the start of retraining (a fiftieth of TrainSpec's)
    schedule: str = "cosine"  # 'step' (x decay_factor every decay_epochs), 'cosine' (to 0 over all steps), 'constant'
    decay_epochs: int = 1  # epochs between two decays of the 'step' schedule
    decay_factor: float = 0.5  # lr multiplier of each 'step' decay, in (0, 1]
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty
    batch_size: int = 64  # examples per SGD step
    seed: int = 0  # seeds the batch order
    retrain_vanilla: bool = True  # retrain the vanilla average too, same recipe and epochs (the reference's default)
    # Keep-best: this share of the train split is held out, scored before retraining and at each checkpoint,
    # and the best state is returned (never one worse than the network that came in).
    validation_fraction: float = 0.1  # share of the (used) train split held out for validation, in (0, 0.5]
    validation_seed: int = 0  # seeds which examples are held out (and which are used, with train_examples)
    train_examples: int = 0  # examples of the train split retraining uses, validation included (0: all of it)

    def __post_init__(self) -> None:
        _check(0 < self.lr <= 10, f"retraining learning rate must be in (0, 10], got {self.lr}")
        _check(self.schedule in SCHEDULES, f"retraining schedule must be one of {SCHEDULES}, got '{self.schedule}'")
        _check(1 <= self.decay_epochs <= MAX_EPOCHS,
               f"retraining decay epochs must be in [1, {MAX_EPOCHS}], got {self.decay_epochs}")
        _check(0 < self.decay_factor <= 1, f"retraining decay factor must be in (0, 1], got {self.decay_factor}")
        _check(0 <= self.momentum < 1, f"retraining momentum must be in [0, 1), got {self.momentum}")
        _check(0 <= self.weight_decay <= 1, f"retraining weight decay must be in [0, 1], got {self.weight_decay}")
        _check(1 <= self.batch_size <= MAX_BATCH,
               f"retraining batch size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        _check(0 <= self.seed < MAX_SEED, f"retraining seed must be in [0, 2**31), got {self.seed}")
        _check(0 < self.validation_fraction <= 0.5,
               f"retraining validation fraction must be in (0, 0.5], got {self.validation_fraction}")
        _check(0 <= self.validation_seed < MAX_SEED,
               f"retraining validation seed must be in [0, 2**31), got {self.validation_seed}")
        _check(self.train_examples == 0 or 2 <= self.train_examples <= 100_000_000,
               f"retraining examples must be 0 (the whole train split) or in [2, 100000000], got {self.train_examples}")


ALIGN_MODES, SOLVERS, GROUND_METRICS = ("weights", "activations"), ("emd", "sinkhorn"), ("euclidean", "cosine")
NORMALIZATIONS, MARGINALS = ("none", "max", "median", "mean"), ("uniform", "importance")
ALIGNMENTS = ("ot", "weight_matching", "cca", "zipit", "pleas")
HEAD_MODES = ("units", "within", "flat")  # attention heads: aligned as units, only within their place, or ignored
WIDTH_REFUSAL = ("a fused width above 1 (--width {:g}) keeps unmatched features side by side, which only ZipIt! (--alignment "
                 "zipit) and PLeaS (--alignment pleas) do; {} fuses into the anchor's width: use --width 1 or one of those")
REPAIR_BIAS = ("--repair-bias gives the fused network a bias per neuron REPAIR restores, so it is part of REPAIR: "
               "add --repair (--renormalize)")
REPAIR_SAMPLES = ("REPAIR (--renormalize) restores each neuron's standard deviation on the activation sample, "
                  "which needs at least 2 samples (--act-samples); got {}")


@dataclass(frozen=True)
class FusionSpec:
    """OT fusion settings; defaults are the paper's recommended ones (Singh & Jaggi, 2020)."""

    mode: str = "weights"  # align neurons by 'weights' or by pre-'activations' on a sample
    act_samples: int = 200  # inputs drawn from the train split for activation alignment
    act_seed: int = 0  # seed of that sample, and of the order weight matching visits the groups in
    solver: str = "emd"  # exact OT ('emd', POT's network simplex) or entropic ('sinkhorn')
    reg: float = 0.01  # entropic regularisation of Sinkhorn, relative to the normalised cost
    ground_metric: str = "euclidean"  # distance between neurons: 'euclidean' or 'cosine'
    squared: bool = False  # square the euclidean distance
    normalize: str = "none"  # divide the cost matrix by its 'max', 'median' or 'mean'
    past_correction: bool = True  # multiply incoming weights by the previous layer's plan
    marginal_correction: bool = True  # rescale the plan so each target neuron gets unit mass
    marginals: str = "uniform"  # neuron masses: 'uniform' or 'importance' (l1 norm of weights)
    ensemble_step: float = 0.5  # weight of the anchor parent when two parents are averaged
    weights: tuple[float, ...] | None = None  # per-parent weights (any N); overrides ensemble_step
    anchor: int = 0  # index of the parent whose neuron order and widths the fused net keeps
    skip_last_layer: bool = True  # average the output layer without a new plan (classes are aligned)
    renormalize: bool = False  # REPAIR: restore each fused neuron's statistics on the activation sample
    repair_bias: bool = keyed_when_set(False)  # REPAIR gives bias-free layers a bias per neuron: the mean restored too
    alignment: str = "ot"  # one of ALIGNMENTS: 'ot', 'weight_matching' (Git Re-Basin), 'cca' (CCA Merge), 'zipit', 'pleas'
    width: float = keyed_when_set(1.0)  # fused width per group, a multiple of the anchor's: 1 (all merged) to N (none)
    heads: str = keyed_when_set("units")  # attention heads of a transformer: one of HEAD_MODES (fusion.heads)
    finetune_epochs: int = 0  # epochs of fine-tuning of the fused net (0 skips)
    retrain: RetrainSpec = RetrainSpec()  # recipe of that fine-tuning (and of the vanilla average's)

    def __post_init__(self) -> None:
        _check(self.mode in ALIGN_MODES, f"mode must be one of {ALIGN_MODES}, got '{self.mode}'")
        _check(1 <= self.act_samples <= MAX_SAMPLES,
               f"activation samples must be in [1, {MAX_SAMPLES}], got {self.act_samples}")
        _check(0 <= self.act_seed < MAX_SEED, f"activation seed must be in [0, 2**31), got {self.act_seed}")
        _check(not self.renormalize or self.act_samples >= 2, REPAIR_SAMPLES.format(self.act_samples))
        _check(not self.repair_bias or self.renormalize, REPAIR_BIAS)
        _check(self.solver in SOLVERS, f"solver must be one of {SOLVERS}, got '{self.solver}'")
        _check(0 < self.reg <= 100, f"Sinkhorn reg must be in (0, 100], got {self.reg}")
        _check(self.ground_metric in GROUND_METRICS,
               f"ground metric must be one of {GROUND_METRICS}, got '{self.ground_metric}'")
        _check(self.normalize in NORMALIZATIONS,
               f"cost normalisation must be one of {NORMALIZATIONS}, got '{self.normalize}'")
        _check(self.marginals in MARGINALS, f"marginals must be one of {MARGINALS}, got '{self.marginals}'")
        _check(0.0 <= self.ensemble_step <= 1.0, f"ensemble step must be in [0, 1], got {self.ensemble_step}")
        if self.weights is not None:
            _check(len(self.weights) >= 2 and all(0 <= w <= MAX_WEIGHT for w in self.weights)
                   and 0 < sum(self.weights) <= MAX_WEIGHT,
                   f"per-parent weights must be at least two, each in [0, {MAX_WEIGHT:g}], with a sum in "
                   f"(0, {MAX_WEIGHT:g}]; got {', '.join(map(str, self.weights))}")
        _check(-MAX_PARENTS <= self.anchor < MAX_PARENTS, f"anchor {self.anchor} out of range")
        _check(self.alignment in ALIGNMENTS, f"alignment must be one of {ALIGNMENTS}, got '{self.alignment}'")
        _check(isinstance(self.width, (int, float)) and not isinstance(self.width, bool)
               and 1 <= self.width <= MAX_PARENTS, f"the fused width is a multiple of the anchor's width in "
               f"[1, number of parents], got {self.width}")
        _check(self.width == 1 or self.alignment in ("zipit", "pleas"), WIDTH_REFUSAL.format(
            self.width, {"ot": "OT", "weight_matching": "weight matching", "cca": "CCA Merge"}.get(self.alignment)))
        _check(self.heads in HEAD_MODES, f"heads must be one of {HEAD_MODES}, got '{self.heads}'")
        _check(0 <= self.finetune_epochs <= MAX_EPOCHS,
               f"fine-tuning epochs must be in [0, {MAX_EPOCHS}], got {self.finetune_epochs}")
        _check(isinstance(self.retrain, RetrainSpec), "the fine-tuning recipe must be a RetrainSpec (its fields are "
               "set one by one: --retrain-lr, --retrain-schedule, ...)")

    def parent_weights(self, n_parents: int) -> list[float]:
        """Normalised averaging weight of each parent."""
        _check(-n_parents <= self.anchor < n_parents, f"anchor {self.anchor} out of range for {n_parents} parents")
        _check(self.width <= n_parents, f"the fused width {self.width:g} is above the number of parents ({n_parents}): "
               f"at width {n_parents} nothing is merged already; choose a width in [1, {n_parents}]")
        if self.weights is not None:
            _check(len(self.weights) == n_parents,
                   f"{len(self.weights)} per-parent weights given for {n_parents} parents")
            total = sum(self.weights)
            return [w / total for w in self.weights]
        if n_parents == 2:
            out = [1.0 - self.ensemble_step] * 2
            out[self.anchor % 2] = self.ensemble_step
            return out
        return [1.0 / n_parents] * n_parents

    def options(self, n_parents: int) -> Any:
        """The otcore.fusion.FusionOptions of this setting for n_parents (weights and anchor resolved, checked)."""
        from otcore.fusion.options import FusionOptions  # fusion imports torch; specs stay torch-free

        return FusionOptions(alignment=self.alignment, mode=self.mode, solver=self.solver, reg=self.reg,
                             ground_metric=self.ground_metric, squared=self.squared, normalize=self.normalize,
                             past_correction=self.past_correction, marginal_correction=self.marginal_correction,
                             marginals=self.marginals, weights=tuple(self.parent_weights(n_parents)),
                             anchor=self.anchor % n_parents, skip_last_layer=self.skip_last_layer,
                             renormalize=self.renormalize, repair_bias=self.repair_bias, seed=self.act_seed,
                             width=float(self.width), heads=self.heads)


PRUNE_TYPES = ("unstructured", "structured")
PRUNE_SCOPES = ("conv", "linear", "all")
PRUNE_ORDERS = ("prune-fuse", "fuse-prune")
FUSED_MASKS = ("reprune", "own-zeros")  # prune-fuse: how the fused net gets the masks its retraining keeps


@dataclass(frozen=True)
class PruneSpec:
    """Magnitude pruning settings (torch.nn.utils.prune)."""

    fraction: float = 0.5  # fraction of weights (or filters) removed, in [0, 1)
    type: str = "unstructured"  # 'unstructured' (L1 per weight) or 'structured' (Ln norm per output filter)
    scope: str = "all"  # which layers: 'conv', 'linear' or 'all' (the seed study used 'conv')
    norm: int = 1  # n of the Ln norm ranking filters in structured pruning
    global_: bool = False  # rank weights across all pruned layers instead of per layer (unstructured)
    keep_last_layer: bool = True  # never prune the classifier layer
    order: str = "prune-fuse"  # prune parents then fuse, or fuse then prune
    retrain_parents_epochs: int = 0  # epochs of masked retraining of each pruned parent
    retrain_epochs: int = 0  # epochs of masked retraining of the fused net
    retrain: RetrainSpec = RetrainSpec()  # recipe of every retraining of this step (parents, fused, vanilla)
    fused_masks: str = "reprune"  # prune-fuse: 'reprune' the fused nets (same type, fraction) or keep 'own-zeros'

    def __post_init__(self) -> None:
        _check(0.0 <= self.fraction < 1.0, f"prune fraction must be in [0, 1), got {self.fraction}")
        _check(self.type in PRUNE_TYPES, f"prune type must be one of {PRUNE_TYPES}, got '{self.type}'")
        _check(self.scope in PRUNE_SCOPES, f"prune scope must be one of {PRUNE_SCOPES}, got '{self.scope}'")
        _check(1 <= self.norm <= 100, f"structured pruning norm must be in [1, 100], got {self.norm}")
        _check(self.order in PRUNE_ORDERS, f"order must be one of {PRUNE_ORDERS}, got '{self.order}'")
        _check(0 <= self.retrain_parents_epochs <= MAX_EPOCHS and 0 <= self.retrain_epochs <= MAX_EPOCHS,
               f"retraining epochs must be in [0, {MAX_EPOCHS}], got {self.retrain_parents_epochs} (parents) and "
               f"{self.retrain_epochs} (fused net)")
        _check(self.fused_masks in FUSED_MASKS, f"fused masks must be one of {FUSED_MASKS}, got '{self.fused_masks}'")
        _check(isinstance(self.retrain, RetrainSpec), "the retraining recipe must be a RetrainSpec (its fields are "
               "set one by one: --retrain-lr, --retrain-schedule, ...)")


TRACE_METHODS = ("auto", "exact", "hutchinson")


@dataclass(frozen=True)
class HessianSpec:
    """Hessian analysis settings (PyHessian-style: power iteration, Hutchinson or exact trace, SLQ)."""

    split: str = "test"  # 'train' or 'test'
    batches: int | str = 1  # number of batches the Hessian is averaged over, or 'all': the whole split, streamed
    batch_size: int = 1000  # examples per batch
    seed: int | None = None  # None: the split's first examples in order; else a seeded shuffle
    top_k: int = 3  # number of top eigenvalues
    power_iters: int = 100  # max power iterations per eigenvalue
    tol: float = 1e-4  # relative tolerance of power iteration
    trace_method: str = "auto"  # 'exact' (Gauss-Newton diagonal), 'hutchinson', or 'auto': exact where the net allows
    trace_probes: int = 100  # Rademacher probes of Hutchinson's trace estimator (max)
    lanczos_iters: int = 100  # Lanczos steps of the spectral density
    density_probes: int = 1  # probe vectors of stochastic Lanczos quadrature
    lambda_min: float = -0.5  # start of the perturbation range along the top eigenvector
    lambda_max: float = 0.5  # end of that range
    lambda_points: int = 21  # points of the perturbation curve

    def __post_init__(self) -> None:
        _check(self.split in ("train", "test"), f"split must be 'train' or 'test', got '{self.split}'")
        _check(self.batches == "all" or (isinstance(self.batches, int) and not isinstance(self.batches, bool)
                                         and 1 <= self.batches <= 1000),
               f"batches must be 'all' or in [1, 1000], got {self.batches!r}")
        _check(1 <= self.batch_size <= MAX_BATCH, f"batch size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        _check(self.seed is None or 0 <= self.seed < MAX_SEED, f"seed must be in [0, 2**31), got {self.seed}")
        _check(1 <= self.top_k <= 100, f"top-k must be in [1, 100], got {self.top_k}")
        _check(1 <= self.power_iters <= 10_000, f"power iterations must be in [1, 10000], got {self.power_iters}")
        _check(0 < self.tol < 1, f"tolerance must be in (0, 1), got {self.tol}")
        _check(self.trace_method in TRACE_METHODS,
               f"trace method must be one of {TRACE_METHODS}, got '{self.trace_method}'")
        _check(1 <= self.trace_probes <= 10_000, f"trace probes must be in [1, 10000], got {self.trace_probes}")
        _check(2 <= self.lanczos_iters <= 1000, f"Lanczos iterations must be in [2, 1000], got {self.lanczos_iters}")
        _check(1 <= self.density_probes <= 1000, f"density probes must be in [1, 1000], got {self.density_probes}")
        _check(-MAX_LAMBDA <= self.lambda_min and self.lambda_max <= MAX_LAMBDA,
               f"lambdas must be in [-{MAX_LAMBDA}, {MAX_LAMBDA}], got [{self.lambda_min}, {self.lambda_max}]")
        _check(self.lambda_max > self.lambda_min,
               f"lambda range must have positive length, got [{self.lambda_min}, {self.lambda_max}]")
        _check(2 <= self.lambda_points <= 1001, f"lambda points must be in [2, 1001], got {self.lambda_points}")
