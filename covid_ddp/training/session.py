"""The job's processes behind one object the loop talks to (Lightning Fabric's idea): ``Session``.

It starts the process group on GPUs or the CPU with the device and precision every rank agreed on,
runs work the processes agree on (one failure ends every rank with its one line), claims the run
folder, and shuts the group down while Python is fully alive: at once on a failure, and where the
loop says it is done (``Session.shut_down``) on success. The loop itself
holds no rank arithmetic, no launcher or signal handling and no process-group teardown.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

from ..cli import is_main_rank, say
from ..errors import Interrupted, first_line
from . import hardware
from .config import TrainConfig
from .distributed import (JobFailed, check_gpus_per_machine, check_launch, cpu_only, describe, exchange_before_group,
                          join_restarted_group, lost_another_process, on_every_process, on_main_process,
                          refuse_independent_launch, refuse_unsupported_engine, refuse_unsupported_type,
                          same_on_every_process)
from .interrupt import TrainingInterrupted
from .run_folder import RunFolder, recorded_precision
from .tracker_choice import TENSORBOARD, tracker_names
from .trackers import FAILED, FINISHED, KILLED, TrackerRuns


class Session:
    """One training job's processes. Use as ``with Session.start(config) as session:``; every
    process of the job does the same calls in the same order."""

    def __init__(self, accelerator: Accelerator, config: TrainConfig, forced: frozenset = frozenset()):
        self.accelerator = accelerator
        self.config = config  # with the precision the processes agreed on
        self.forced = forced  # result flags the hardware changed unasked: a resume records, not refuses, them
        self.run_dir: Path | None = None  # once claimed: named by a failure's message
        self.tracker_runs: TrackerRuns | None = None  # the main process's trackers beside TensorBoard

    @classmethod
    @contextmanager
    def start(cls, config: TrainConfig):
        """The started session; on the way out, a failure ends the group without a barrier (the
        other ranks may never reach one), and a peer's loss is told as such."""
        try:
            session = cls(*start_job(config))
            try:
                yield session
            except Exception as error:
                session.end_trackers(_status_after(error))
                shut_down(session.accelerator, barrier=False)
                if lost_another_process(error):
                    raise session._peer_lost(error) from None
                raise
        finally:
            # The job's accelerate state goes with it: the same Python process (a notebook) can train
            # again, or start several processes with notebook_launcher, which refuses while one is held.
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def describe(self) -> str:
        return describe(self.accelerator)

    def print(self, line: str) -> None:
        """On the main process only."""
        self.accelerator.print(line)

    def on_main(self, work: Callable[[], Any], what: str, *, patient: bool = False) -> Any:
        """``work()`` on the main process, its value (or its failure) on every process."""
        return on_main_process(self.accelerator, work, what, patient=patient)

    def on_every(self, work: Callable[[], Any], what: str, *, here: bool = True, patient: bool = False) -> Any:
        """``work()`` on every process (where ``here``); one failure ends them all."""
        return on_every_process(self.accelerator, work, what, here=here, patient=patient)

    def same_everywhere(self, value, what: str) -> None:
        same_on_every_process(self.accelerator, value, what)

    @contextmanager
    def run_folder(self, config: TrainConfig):
        """The run folder, claimed for this job (``run_folder.RunFolder.open``)."""
        with RunFolder.open(self.accelerator, config) as folder:
            self.run_dir = folder.path
            yield folder

    def shut_down(self) -> None:
        """The end of a job that went well: every process reaches it, then the group goes. The
        trackers beside TensorBoard stay open for what the run writes after (``closing_trackers``)."""
        if self.tracker_runs is not None:
            self.tracker_runs.detach(self.accelerator)
        shut_down(self.accelerator)

    def start_trackers(self, folder: Path, params: dict, resumed: bool) -> None:
        """--log-with's trackers beside TensorBoard, on the main process (a failure ends the job)."""
        def start() -> None:
            self.tracker_runs = TrackerRuns.start(self.accelerator, tracker_names(self.config.log_with), folder,
                                                  params, resumed)

        self.on_main(start, "start the experiment trackers")

    @contextmanager
    def closing_trackers(self):
        """Around what the main process does once the job is over: then the trackers log the run's
        files and end, as finished, or failed with it."""
        try:
            yield
        except BaseException as error:
            self.end_trackers(_status_after(error))
            raise
        self.end_trackers(FINISHED)

    def end_trackers(self, status: str) -> None:
        if self.tracker_runs is not None:
            self.tracker_runs.detach(self.accelerator)  # (end_training, if it comes, ends no tracker twice)
            self.tracker_runs.end(status)

    def _peer_lost(self, error: Exception) -> JobFailed:
        resume = f" Complete checkpoints are kept: rerun with --resume auto --output-dir {self.run_dir}" \
            if self.run_dir else ""
        return JobFailed(f"another process of this job ended while this one waited for it ({first_line(error)}); "
                         f"its own output says why.{resume}")


def _status_after(error: BaseException) -> str:
    """A stopped run is KILLED in the trackers (MLflow's word), a failed one FAILED."""
    return KILLED if isinstance(error, (Interrupted, TrainingInterrupted, KeyboardInterrupt)) else FAILED


def start_job(config: TrainConfig) -> tuple[Accelerator, TrainConfig, frozenset]:
    """The process group (GPUs, or CPU processes where no GPU is usable), ``config`` with the
    precision every process of it agreed on, and the result flags that hardware changed unasked."""
    check_launch()
    refuse_unsupported_engine()
    cpu = cpu_only(config.cpu)
    if not cpu and torch.cuda.is_available():
        check_gpus_per_machine()
    timeout = datetime.timedelta(seconds=config.dist_timeout)
    # The main process reads the precision of a run to resume (other machines may not see its folder).
    resumed = {"recorded_precision": recorded_precision(config)} if is_main_rank() else {}
    views = exchange_before_group({**hardware.local_view(cpu), **resumed}, timeout)
    hardware.agree_device(views)
    recorded = views[0].get("recorded_precision")
    precision, why = hardware.agree_precision(views, config.mixed_precision, recorded)
    why = why or hardware.launcher_precision_note(config.mixed_precision, precision)
    if why and is_main_rank():
        say(f"covid-ddp-train: note: {why}")
    asked_auto = hardware.requested_precision(config.mixed_precision) == "auto"
    forced = frozenset({"--mixed-precision"}) if asked_auto and recorded not in (None, precision) else frozenset()
    config = dataclasses.replace(config, mixed_precision=precision)  # config.json records what ran
    join_restarted_group(cpu, timeout)
    accelerator = build_accelerator(config, cpu)
    refuse_independent_launch(accelerator.num_processes)
    refuse_unsupported_type(accelerator.distributed_type)
    hardware.tune_backends(accelerator.device)
    return accelerator, config, forced


def build_accelerator(config: TrainConfig, cpu: bool | None = None) -> Accelerator:
    """``config`` with its mixed precision agreed (``hardware.agree_precision``)."""
    accelerator = Accelerator(
        cpu=cpu_only(config.cpu) if cpu is None else cpu,
        mixed_precision=config.mixed_precision,
        dynamo_backend=_dynamo_backend(config.compile),
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with=TENSORBOARD if TENSORBOARD in tracker_names(config.log_with) else None,  # the others: start_trackers
        # A placeholder: the run folder is settled (and shared by all ranks) after start-up.
        project_dir=config.output_dir or "runs",
        # split_batches: --eval-batch-size is global and each process scores its slice of every
        # evaluation batch. (Training batches are sharded by loader.EpochBatches, not here.)
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=config.dist_timeout))],
    )
    # backward() divides by this; ACCELERATE_GRADIENT_ACCUMULATION_STEPS in the environment would
    # override it, while the loop counts cycles with --grad-accum-steps: the flag wins.
    accelerator.gradient_accumulation_steps = config.grad_accum_steps
    return accelerator


def _dynamo_backend(compile_flag: bool) -> str | None:
    """--compile: the accelerate config's backend if it names one, else inductor. Without it,
    None leaves the choice to the accelerate config. Either way the model is compiled after DDP
    wrapping, as accelerate does it."""
    configured = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "NO").upper()
    return ("inductor" if configured == "NO" else configured.lower()) if compile_flag else None


def shut_down(accelerator: Accelerator, barrier: bool = True) -> None:
    """Close the trackers and destroy the process group while Python is fully alive.

    Left to interpreter exit, gloo's worker threads can be torn down after the interpreter
    and abort the process ("terminate called without an active exception", SIGABRT) even
    though the run finished. So every reference to the DDP wrapper is dropped and collected,
    then the group is destroyed; the barrier first keeps any rank from leaving mid-collective.
    """
    if barrier:
        accelerator.wait_for_everyone()
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    if grouped:  # (0.4 s of collection, worth it only where there are gloo threads to outlive)
        accelerator.free_memory()
        gc.collect()
    accelerator.end_training()
    if grouped:
        gc.collect()
