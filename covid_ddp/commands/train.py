"""covid-ddp-train: train (``training.trainer.train``), then audit the shipped weights and write
the run's model card.

    python launch/train.py --dataset synthetic                     # one process (GPU if present, else CPU)
    accelerate launch --config_file accelerate_config.yaml launch/train.py
    torchrun --nproc_per_node 2 launch/train.py                    # two processes, on GPUs or CPU (gloo)
    covid-ddp-train --config runs/demo/config.json --seed 2        # a settings file, flags over it
"""

from __future__ import annotations


from .. import launcher_watch
from ..cli import run_cli
from ..data.format import RawData
from ..data.splits import Split
from ..evaluation.audit import audit_after_training, training_passes
from ..evaluation.model_card import refresh_model_card
from ..training.config import parse_config
from ..training.interrupt import stop_even_while_waiting
from ..training.trainer import TrainedRun, train


def main(argv: list[str] | None = None) -> int:
    launcher_watch.arm("covid-ddp-train")  # (launch/train.py arms it earlier, before torch is imported)

    def command():
        # SIGTERM and Ctrl-C end start-up and the final stage in one line; the loop's own stop saves first.
        with stop_even_while_waiting("covid-ddp-train"):
            return train(parse_config(argv), after=audit_and_describe)

    return run_cli(command, prog="covid-ddp-train")


def audit_and_describe(run: TrainedRun, data: RawData, split: Split) -> None:
    """What the command adds to a run it trained: the shortcut audit of the shipped weights on the
    test split (--audit: under 'auto', when it adds under a tenth of the run's work) and model_card.md."""
    trained = training_passes(len(split.train), len(split.val), run.config.epochs)
    audit_after_training(run.config.audit, run.weights, data, split.test, run.threshold, run.config.seed, trained)
    refresh_model_card(run.folder, "covid-ddp-train")


if __name__ == "__main__":  # python -m covid_ddp.commands.train, torchrun -m covid_ddp.commands.train
    raise SystemExit(main())
