"""The training configuration: one dataclass whose defaults are the original recipe.

The command line is generated from it (every field is a ``--flag`` with the
field's help text), so a flag, its default and its documentation live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..bounds import BOOTSTRAP, COUNT, FRACTION, IMAGE_SIZES, POSITIVE, POSITIVE_INT, SEED, Bounds
from ..cli import ArgumentParser, HelpFormatter
from ..data.format import IMAGES_FILE, LABELS_FILE, MCFAM_BASE_URL
from ..data.splits import SplitPlan
from ..destinations import refuse_inputs
from ..errors import UserError
from ..models.backbones import check_model_name
from ..models.spec import DATA_SCALE, INPUT_SCALES, ModelSpec
from .config_file import read_settings, settings_as_flags
from .recipe import OPTIMIZERS, SCHEDULES
from .tracker_choice import tracker_names


def _flag(default, help: str, **argparse_kwargs):
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainConfig:
    # Data
    dataset: str = _flag("mcfam", "'mcfam' (downloaded once and cached) or 'synthetic' (generated, offline)",
                         choices=["mcfam", "synthetic"])
    data_dir: Optional[list] = _flag(None, "folder(s) with train_images64.npz and train_labels.npz (and an optional "
                                     "meta.npz), used as they are; several are trained on as one set, each image "
                                     "keeping its source (meta.npz 'dataset', else the folder's name) (default: "
                                     "MCFAM, downloaded once into ~/.cache/covid_ddp/mcfam)", metavar="DIR", nargs="+")
    download: bool = _flag(False, "download MCFAM into the one --data-dir folder (created if need be) when its files "
                           "are missing; without it a --data-dir must already hold them")
    mcfam_url: str = _flag(MCFAM_BASE_URL, "base URL of the MCFAM files (a mirror, for example)", metavar="URL")
    sha256_images: Optional[str] = _flag(None, "refuse a train_images64.npz whose sha256 is not this (pin the "
                                         "file: the MCFAM source is plain HTTP)", metavar="HEX")
    sha256_labels: Optional[str] = _flag(None, "refuse a train_labels.npz whose sha256 is not this", metavar="HEX")
    synthetic_size: int = _flag(10000, "number of images of --dataset synthetic", metavar="N")
    image_size: Optional[int] = _flag(None, "which images of the --data-dir folders to train on, by size "
                                      "(train_images<S>.npz or the mapped store train_images<S>.npy; default: the only "
                                      "size there), or the size of --dataset synthetic (default 64)", metavar="S")
    test_size: float = _flag(SplitPlan.test_size, "fraction of the data held out for the final test (stratified, random_state 42)", metavar="FRACTION")
    val_size: float = _flag(SplitPlan.val_size, "fraction of the training part held out for validation, which drives the LR "
                            "schedule; 0 trains on the whole training part and steps the schedule on the test "
                            "loss, as the original did", metavar="FRACTION")
    group_split: bool = _flag(False, "split by patient (meta.npz 'patient_id' in --data-dir): no patient in two "
                              "of train/val/test; --test-size and --val-size are then fractions of patients")
    holdout_source: Optional[str] = _flag(None, "test on every image of this source (meta.npz 'dataset') and "
                                          "train/validate on the rest: leave-one-source-out; --test-size is unused", metavar="SOURCE")
    exclude_source: Optional[str] = _flag(None, "comma-separated sources (meta.npz 'dataset') left out of every "
                                          "part, e.g. kermany for the adult-only subset of real-cxr", metavar="SOURCES")
    # Model
    model: str = _flag("net", "the network: 'net' (the seed's four-conv CNN, its recipe's default), torchvision's "
                       "'resnet18', 'resnet50', 'densenet121', 'efficientnet_b0' (one input channel; need torchvision), "
                       "or 'timm:NAME' (needs timm); any size of images, the data's", metavar="NAME")
    init_weights: Optional[str] = _flag(None, "start a backbone from this local state_dict (ImageNet or chest X-ray "
                                        "weights you downloaded; read with weights_only=True): its 3-channel first "
                                        "convolution summed to one, its classifier head replaced. Nothing is ever "
                                        "downloaded (default: random initial weights)", metavar="PTH")
    input_scale: str = _flag(DATA_SCALE, "the pixel scale a backbone's first layer sees: 'data' (the training split's "
                             "mean and std) or 'xrv' (torchxrayvision's [-1024, 1024], which its chest X-ray "
                             "weights expect: docs/models.md#weights-from-the-chest-x-ray-zoo); recorded with the "
                             "weights and applied by every command", choices=list(INPUT_SCALES))
    # Recipe
    epochs: int = _flag(10, "number of passes over the training part", metavar="N")
    batch_size: Optional[int] = _flag(None, "GLOBAL batch size: images per optimizer micro-step summed over all "
                                      "processes (each process gets batch-size / num-processes), so the recipe does "
                                      "not change with the process count; an optimizer step sees batch-size x "
                                      "grad-accum-steps images (default: the recipe's 100; for a training part of "
                                      "under 1,000 images the largest of 64, 32, 16, 8 that gives an epoch at least 10 steps, "
                                      "8 at the least; said before training)", metavar="N")
    lr: float = _flag(1e-3, "learning rate (the peak of --schedule cosine)", metavar="LR")
    optimizer: str = _flag("adam", "'adam' (the recipe's) or 'adamw' (decoupled weight decay, the fine-tuner's)",
                           choices=list(OPTIMIZERS))
    weight_decay: float = _flag(0.0, "weight decay: L2 in the gradient with adam, decoupled with adamw (e.g. 0.05)",
                                metavar="W")
    schedule: str = _flag("plateau", "'plateau': ReduceLROnPlateau on the validation loss once an epoch (the "
                          "recipe's); 'cosine': from --lr to 0 over the run's optimizer steps, stepped every step",
                          choices=list(SCHEDULES))
    warmup_epochs: int = _flag(0, "with --schedule cosine: epochs of linear warm-up to --lr first", metavar="EPOCHS")
    lr_patience: int = _flag(2, "ReduceLROnPlateau patience (epochs)", metavar="EPOCHS")
    lr_factor: float = _flag(0.6, "ReduceLROnPlateau factor", metavar="FACTOR")
    label_smoothing: float = _flag(0.0, "train against targets smoothed by this much (0.1: 0.95 / 0.05); the "
                                   "validation loss and every metric stay plain NLL", metavar="E")
    ema: Optional[float] = _flag(None, "keep an exponential moving average of the weights with this decay (e.g. "
                                 "0.99: about the last 100 optimizer steps), updated every optimizer step; the "
                                 "average is validated, selected and shipped instead of the weights (default: off)",
                                 metavar="DECAY")
    dropout: float = _flag(0.7, "dropout probability after net's first fully connected layer (the backbones keep "
                           "their own)", metavar="P")
    seed: int = _flag(1, "random seed (0 or more) of the run's independent streams: initial weights, data order, "
                      "dropout and augmentation per process, bootstrap; the split always uses random_state 42", metavar="N")
    grad_accum_steps: int = _flag(1, "micro-batches per optimizer step (gradient accumulation)", metavar="N")
    max_grad_norm: Optional[float] = _flag(None, "clip the gradient norm to this value (default: no clipping)", metavar="NORM")
    augment: bool = _flag(False, "augment training batches on the device: small random shifts (up to 4 px), zoom "
                          "(+/-10%%) and contrast/brightness changes; never flips (left and right anatomy differ)")
    augment_acquisition: bool = _flag(False, "per training image, randomly vary what differs between X-ray "
                                      "machines and exporters rather than diseases: gamma (1/1.6 to 1.6), window "
                                      "(each end +/-12.5%%), blur or sharpening, noise (std up to 6 grey levels); "
                                      "against the source shortcut (docs/real-cxr.md)")
    balance_sources: bool = _flag(False, "draw each epoch's training images (with replacement) so that every "
                                  "source x class pair weighs the same; a source is meta.npz 'dataset', or the "
                                  "folder's name for a folder without one (one such folder: the two classes)")
    augment_marks: bool = _flag(False, "stamp arrows, boxes, letters and border bands, the marks publications draw "
                                "on figures, on half the training images of both classes (against the source "
                                "shortcut: docs/real-cxr.md)")
    calibration: str = _flag("temperature", "'temperature': a temperature fitted on the validation split by log-loss "
                             "divides the shipped weights' logits, so that P(COVID) is calibrated (the calls' ranking "
                             "is unchanged; none without a validation split); 'none': the raw softmax",
                             choices=["temperature", "none"])
    select_by: str = _flag("loss", "which epoch's weights the run ships: the one with the lowest validation "
                           "loss, the highest validation ROC AUC, or the last epoch (the original's behaviour, and "
                           "what --val-size 0 does: there is then no validation split to choose on)",
                           choices=["loss", "auc", "last"])
    early_stop: Optional[int] = _flag(None, "stop when the --select-by metric has not improved for this many epochs "
                                      "(default: train all --epochs)", metavar="PATIENCE")
    # Evaluation
    target_sensitivity: Optional[float] = _flag(None, "choose the decision threshold on the validation split as "
                                                "the highest reaching this sensitivity (default: Youden's J)", metavar="S")
    bootstrap: int = _flag(1000, "bootstrap resamples for the 95%% confidence intervals of the test metrics "
                           "(0: none); of patients when meta.npz has 'patient_id', else of images", metavar="N")
    audit: str = _flag("auto", "the shortcut audit of the shipped weights on the test split (covid-ddp-audit) at "
                       "the end of the run: 'auto' runs it when it adds under 10%% to the run's work (counted in image "
                       "passes, not timed: the same on any machine), else says how to",
                       choices=["auto", "yes", "no"])
    # Hardware and distribution
    dist_timeout: float = _flag(300.0, "seconds a process waits in a collective for the others before the job fails "
                                "(a dead or hung rank then ends the run instead of hanging it)", metavar="SECONDS")
    mixed_precision: Optional[str] = _flag(None, "'no', 'fp16', 'bf16', or 'auto': bf16 where every process computes "
                                           "it natively (Ampere+ GPUs; CPUs with AVX512-BF16 or AMX), fp16 on older "
                                           "GPUs, else no. A choice (here or in the accelerate config) is kept wherever "
                                           "every process can run it, else replaced by auto's, saying so (default: auto)",
                                           choices=["no", "fp16", "bf16", "auto"])
    compile: bool = _flag(False, "torch.compile the model (inductor, or the accelerate config's dynamo_backend). "
                          "Pays on GPUs; on a 2-core CPU it trained slower (docs/performance.md); the first "
                          "steps include the compilation. Can be switched on or off at a --resume")
    sync_bn: bool = _flag(False, "use SyncBatchNorm: batch statistics over all processes' shards")
    cpu: bool = _flag(False, "train on the CPU even when a GPU is present")
    data_on_device: str = _flag("auto", "hold the uint8 set on each process's device (one copy, batches drawn by "
                                "tensor indexing there): 'auto' does when it fits in a quarter of the free GPU memory",
                                choices=["auto", "yes", "no"])
    workers: int = _flag(0, "DataLoader worker processes gathering training batches from host memory or a mapped "
                         "store, ahead of the step (0: the training process gathers them, cut on its device where "
                         "the set is held there)", metavar="N")
    eval_batch_size: Optional[int] = _flag(None, "global batch size for validation and test evaluation (default: "
                                           "32 per process on CPU, where small batches stay in cache and run 2x "
                                           "faster than 100; 1000 per process on GPU)", metavar="N")
    # Outputs
    output_dir: Optional[str] = _flag(None, "run folder (default: runs/<timestamp>); a finished run there is "
                                      "refused unless --overwrite", metavar="DIR")
    overwrite: bool = _flag(False, "replace a finished run in --output-dir")
    resume: Optional[str] = _flag(None, "'latest' (newest checkpoint of --output-dir), 'auto' (the same, or a new "
                                  "run when there is none) or a checkpoint folder; flags that change the result "
                                  "must be the run's (its config.json)", metavar="latest|auto|CHECKPOINT")
    resume_with_changes: bool = _flag(False, "with --resume: continue although flags that change the result (data, "
                                      "split, seed, batch, accumulation, lr, recipe, precision) differ from the run's "
                                      "config.json; each change is recorded there, and a new --lr is applied to the "
                                      "optimizer")
    keep_checkpoints: int = _flag(3, "number of epoch checkpoints kept in <output-dir>/checkpoints", metavar="N")
    log_with: str = _flag("tensorboard", "experiment trackers the main process logs to, through accelerate, "
                          "comma-separated: tensorboard (in the run folder), mlflow, wandb, aim, comet_ml, clearml, "
                          "dvclive, ...; each configured by its own environment (MLFLOW_TRACKING_URI, WANDB_MODE=offline); "
                          "'none': none (docs/training.md#experiment-trackers)", metavar="TRACKERS")
    log_every: int = _flag(20, "log training loss, learning rate and images/s to the trackers every this many steps", metavar="STEPS")
    log_images_every: int = _flag(1, "draw TensorBoard figures every this many epochs: validation inputs with their "
                                  "labels, Grad-CAM overlays, and at the end test ROC and confusion matrix (0: never; "
                                  "each drawing takes ~0.5 s on a CPU)", metavar="EPOCHS")

    def validate(self) -> None:
        """Reject values that cannot work, with the flag named."""
        for name, bounds in FLAG_BOUNDS.items():  # NaN and infinities fail every bound
            bounds.check(getattr(self, name), f"--{_dashed(name)}")
        if self.download and (not self.data_dir or len(self.data_dir) > 1 or self.dataset != "mcfam"):
            raise UserError("--download fills one --data-dir folder with MCFAM (without --data-dir, MCFAM is "
                            "downloaded into the cache by itself)")
        if self.early_stop is not None and (self.val_size == 0 or self.select_by == "last"):
            raise UserError("--early-stop watches the validation split: it needs --val-size above 0 and --select-by "
                            "loss or auc")
        if self.warmup_epochs and self.schedule != "cosine":
            raise UserError("--warmup-epochs warms up the cosine schedule: add --schedule cosine")
        if self.workers and self.data_on_device == "yes":
            raise UserError("--workers gather training batches in host memory; --data-on-device yes holds the set on "
                            "the device instead: choose one")
        check_model_name(self.model)
        tracker_names(self.log_with)
        if self.output_dir and self.data_dir:  # a run's files mixed into its data would be read as data
            refuse_inputs(Path(self.output_dir), "--output-dir", self.data_dir, nested=False)
        if self.input_scale != DATA_SCALE and self.model == "net":
            raise UserError(f"--input-scale {self.input_scale} is for a backbone's initial weights (--model "
                            "densenet121 --init-weights ...); net normalises by the training split")
        if self.init_weights and self.model == "net":
            raise UserError("--init-weights starts a backbone (--model resnet18, ...); net trains from random weights, "
                            "as the seed's recipe does")

    def pins(self) -> dict:
        """Pinned sha256 per MCFAM file name."""
        return {name: pin for name, pin in ((IMAGES_FILE, self.sha256_images), (LABELS_FILE, self.sha256_labels)) if pin}

    def model_spec(self) -> ModelSpec:
        """The network and its input size: the data's, which training settles before it builds a model."""
        if self.image_size is None:
            raise ValueError("image_size is not settled: set it to the data's (training.trainer.set_up_job does)")
        return ModelSpec(self.model, self.image_size, self.input_scale)

    def split_plan(self) -> SplitPlan:
        sources = tuple(name.strip() for name in (self.exclude_source or "").split(",") if name.strip())
        return SplitPlan(self.test_size, self.val_size, self.group_split, self.holdout_source, sources)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Flags that make a resumed run another experiment: refused at a resume unless --resume-with-changes.
# The others may change freely: where and how fast it runs, what it logs, how many epochs to reach.
RESULT_FLAGS = ("dataset", "synthetic_size", "image_size", "model", "init_weights", "input_scale", "test_size", "val_size", "group_split", "holdout_source",
                "exclude_source", "batch_size", "grad_accum_steps", "lr", "lr_patience",
                "lr_factor", "optimizer", "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "ema",
                "dropout", "seed", "max_grad_norm", "augment", "augment_acquisition", "balance_sources",
                "augment_marks", "sync_bn", "mixed_precision", "select_by", "calibration")


RECIPE_BATCH_SIZE = 100
# The evaluation batch per process: on a CPU a batch of 32 stays in cache and scores Net ~2x faster
# than 100, in fp32 and bf16 (docs/performance.md); a GPU wants large batches to amortise kernel launches.
EVAL_BATCH_PER_PROCESS = {"cpu": 32, "cuda": 1000}
SMALL_SET_BATCH_SIZES = (64, 32, 16, 8)  # for a set too small for 10 steps of 100
MIN_STEPS_PER_EPOCH = 10  # an epoch of fewer optimizer steps hardly moves the weights (1 step of 100 images)


def shared_evenly(size: int, num_processes: int) -> int:
    """The largest multiple of ``num_processes`` up to ``size`` (at least one image a process): a
    global batch every process takes an equal share of, never larger than asked."""
    return max(num_processes, size // num_processes * num_processes)


def batch_size_for(train_images: int, num_processes: int = 1) -> int:
    """The default global batch: the recipe's 100, unless that gives an epoch fewer than 10 steps;
    then the largest of 64, 32, 16, 8 that gives 10 (8 on the smallest sets); each made a multiple
    of the process count (``shared_evenly``: 99 on 3 processes, 96 on 8 or 16)."""
    for size in (RECIPE_BATCH_SIZE, *SMALL_SET_BATCH_SIZES):
        size = shared_evenly(size, num_processes)
        if train_images // size >= MIN_STEPS_PER_EPOCH:
            return size
    return shared_evenly(SMALL_SET_BATCH_SIZES[-1], num_processes)


def settle_batches(config: TrainConfig, train_images: int, num_processes: int,
                   device_type: str) -> tuple[TrainConfig, str | None]:
    """The run's two batch sizes, settled here alone: the training batch (``settle_batch_size``)
    and the evaluation batch (--eval-batch-size, or ``EVAL_BATCH_PER_PROCESS`` of the device for
    every process), both global and shared evenly by the processes. config.json records them."""
    for flag, given in (("--batch-size", config.batch_size), ("--eval-batch-size", config.eval_batch_size)):
        if given and given % num_processes:
            fits = sorted({shared_evenly(given, num_processes), shared_evenly(given, num_processes) + num_processes})
            raise UserError(f"{flag} {given} is global and does not divide evenly over {num_processes} processes; "
                            f"give a multiple of {num_processes} ({' or '.join(map(str, fits))}), or leave it out")
    config, note = settle_batch_size(config, train_images, num_processes)
    eval_batch = config.eval_batch_size or EVAL_BATCH_PER_PROCESS.get(device_type, EVAL_BATCH_PER_PROCESS["cpu"]) * num_processes
    return dataclasses.replace(config, eval_batch_size=eval_batch), note


def settle_batch_size(config: TrainConfig, train_images: int,
                      num_processes: int = 1) -> tuple[TrainConfig, str | None]:
    """``config`` with its batch size settled (--batch-size, or ``batch_size_for`` the training part
    and the process count), and a note to print when it is not the recipe's 100, or a warning when
    an epoch would be a handful of optimizer steps (one step of 100 images an epoch hardly trains,
    and still prints a test accuracy)."""
    chosen = config.batch_size or batch_size_for(train_images, num_processes)
    steps = train_images // chosen
    optimizer_steps = -(-steps // config.grad_accum_steps)
    note = None
    if steps == 0:  # no step at all: make_loaders says so
        pass
    elif config.batch_size is None and chosen == shared_evenly(RECIPE_BATCH_SIZE, num_processes) != RECIPE_BATCH_SIZE:
        note = (f"note: batch size {chosen} instead of the recipe's {RECIPE_BATCH_SIZE}, a global batch the "
                f"{num_processes} processes share evenly ({chosen // num_processes} each); --batch-size sets it")
    elif config.batch_size is None and chosen != RECIPE_BATCH_SIZE:
        note = (f"note: {train_images} training images: batch size {chosen} instead of the recipe's "
                f"{RECIPE_BATCH_SIZE}, for {steps} steps an epoch ({RECIPE_BATCH_SIZE} would give "
                f"{train_images // RECIPE_BATCH_SIZE}); --batch-size sets it")
    elif optimizer_steps < MIN_STEPS_PER_EPOCH:
        suggested = batch_size_for(train_images, num_processes)
        accumulation = f" x --grad-accum-steps {config.grad_accum_steps}" if config.grad_accum_steps > 1 else ""
        note = (f"warning: {train_images} training images at --batch-size {chosen}{accumulation}: {optimizer_steps} "
                f"optimizer step{'s' if optimizer_steps > 1 else ''} an epoch, and {train_images - steps * chosen} "
                f"images left out of each epoch by the last partial batch; --batch-size {suggested} gives "
                f"{train_images // suggested} steps")
    return dataclasses.replace(config, batch_size=chosen), note


def changed_flags(recorded: dict, config: TrainConfig) -> dict[str, tuple]:
    """{flag: (recorded value, this run's value)} for the RESULT_FLAGS that differ (a flag the
    recorded configuration does not know, from an earlier version, is not compared)."""
    current = config.to_dict()
    # A cosine schedule spans the run's epochs: another --epochs reshapes what is left of it.
    compared = RESULT_FLAGS + (("epochs",) if config.schedule == "cosine" else ())
    return {f"--{_dashed(name)}": (recorded[name], current[name]) for name in compared
            if name in recorded and name in current and recorded[name] != current[name]}


# The values each numeric flag takes (TrainConfig.validate; --help says the upper ones).
FLAG_BOUNDS = {
    "synthetic_size": POSITIVE_INT, "image_size": IMAGE_SIZES, "test_size": FRACTION,
    "val_size": Bounds(float, low=0, high=1, high_open=True), "epochs": POSITIVE_INT, "batch_size": POSITIVE_INT,
    "lr": POSITIVE, "lr_patience": COUNT, "lr_factor": FRACTION, "weight_decay": Bounds(float, low=0),
    "warmup_epochs": COUNT, "label_smoothing": Bounds(float, low=0, high=1, high_open=True),
    "ema": Bounds(float, low=0, high=1, low_open=True, high_open=True),
    "dropout": Bounds(float, low=0, high=1, high_open=True),
    "seed": SEED, "grad_accum_steps": POSITIVE_INT, "max_grad_norm": POSITIVE, "early_stop": POSITIVE_INT,
    "target_sensitivity": Bounds(float, low=0, high=1, low_open=True), "bootstrap": BOOTSTRAP,
    "dist_timeout": POSITIVE, "workers": COUNT, "eval_batch_size": POSITIVE_INT, "keep_checkpoints": POSITIVE_INT,
    "log_every": POSITIVE_INT, "log_images_every": COUNT,
}


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    # Every rank parses the same command line: an error (an unknown flag, a bad choice) is a
    # UserError on each, which run_cli has the main process alone print.
    parser = ArgumentParser(
        prog="covid-ddp-train",
        description="Train the COVID / non-COVID chest X-ray CNN on one or many processes "
        "(launch with `accelerate launch`, `torchrun` or plain `python`). Not for clinical use.",
        formatter_class=HelpFormatter,
    )
    for spec in dataclasses.fields(TrainConfig):
        extra = {key: value for key, value in spec.metadata.items() if key != "help"}
        flag = f"--{_dashed(spec.name)}"
        if spec.type in ("bool", bool):
            # --no-X too, to switch off what a --config file switched on. Left out when not
            # given (SUPPRESS): the dataclass's default then applies.
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=spec.metadata["help"])
            continue
        bounds = FLAG_BOUNDS.get(spec.name)
        said = f" ({bounds.describe()})" if bounds is not None and bounds.high is not None else ""
        parser.add_argument(flag, type=_parse_type(spec.type), default=spec.default,
                            help=spec.metadata["help"] + said, **extra)
    parser.add_argument("--config", metavar="FILE", help="settings from a YAML or JSON file, named as these flags "
                        "(batch_size: 64), or a run's own config.json to train that run again; flags given here "
                        "win (docs/configuration.md)")
    return parser


def _parse_type(annotation):
    text = str(annotation)
    for name, kind in (("int", int), ("float", float)):
        if text in (name, f"Optional[{name}]"):
            return kind
    return str


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The configuration of a command line (``sys.argv[1:]`` by default), with a ``--config``
    file's settings under it."""
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    parser = build_parser()
    settings_file = _settings_file(argv)
    if settings_file is not None:
        argv = [*_flags_of_file(Path(settings_file), parser), *argv]  # the command line's own come last: they win
    values = vars(parser.parse_args(argv))
    values.pop("config")
    config = TrainConfig(**values)
    config.validate()
    return config


def _settings_file(argv: list[str]) -> str | None:
    finder = ArgumentParser(prog="covid-ddp-train", add_help=False)
    finder.add_argument("--config")
    return finder.parse_known_args(argv)[0].config


def _flags_of_file(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    """A settings file as flags, each value checked as the flag would be, and named with the file."""
    flags = settings_as_flags(path, read_settings(path), dataclasses.fields(TrainConfig))
    try:
        values = vars(parser.parse_args(flags))
    except UserError as error:
        raise UserError(f"--config {path}: {error}") from None
    given = {flag[2:].replace("-", "_") for flag in flags if flag.startswith("--")}
    for name in given & set(FLAG_BOUNDS):
        FLAG_BOUNDS[name].check(values[name], f"--config {path}: {name}")
    return flags


def default_output_dir(timestamp: str) -> Path:
    return Path("runs") / timestamp
