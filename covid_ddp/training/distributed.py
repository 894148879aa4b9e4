"""The job's processes: where they train, and work they agree on.

Every rank of a job must reach the same answer to two questions, or the job hangs, or
splits into independent runs that overwrite each other's files:

- **Where to train, and in which precision.** Each process's view (``hardware.local_view``)
  is swapped through the launcher's store before the group forms (``exchange_before_group``),
  and every process draws the same conclusion from the same views. ``cpu_only`` is true with
  ``--cpu`` or when no CUDA device is usable;
  the accelerator is then built for the CPU, which is what makes accelerate join the
  launcher's processes in a gloo group (asked for GPUs it would not, and every process
  would train alone). So ``accelerate launch`` with a multi-GPU config, ``torchrun`` and
  plain ``python`` all work on a laptop without flags.
- **Who does what, and did it work.** ``on_main_process`` runs work one process does for all
  (download, run lock, checkpoint and final writes) and ``on_every_process`` work each does
  for itself (reading the data, its share of a checkpoint). Both end in one small all-gather
  of the outcome, so ANY failure, on any rank, is raised on every rank in the same call as
  ``JobFailed``: the job ends everywhere within seconds and only the main process prints
  its one line (``cli.run_cli``). A rank that fails outside them (a crash, ``kill -9``) is
  seen by the others as a closed connection: ``lost_another_process`` names that case.

(A worker whose launcher dies is stopped by ``launcher_watch``.)
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch
from accelerate.utils import gather_object

from ..errors import Interrupted, LocalError, UserError


class JobFailed(UserError):
    """A failure every rank raises together; the message names the rank when it was not the main one."""


# --- where to train -------------------------------------------------------------------------


def cpu_only(cpu_flag: bool) -> bool:
    """Train on the CPU: asked for (``--cpu``), or several processes were launched and no CUDA
    device is here to join them (accelerate would then leave each process alone). A single
    process is left to accelerate, which picks a GPU, Apple's MPS, or the CPU."""
    return cpu_flag or (launched_processes() > 1 and not torch.cuda.is_available())


def launched_processes() -> int:
    """The job's process count as the launcher set it (torchrun, accelerate launch, MPI)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if name in os.environ:
            return int(os.environ[name])
    return 1


def describe(accelerator) -> str:
    """'2 CPU processes (gloo), bf16 autocast': the console's first line."""
    count, device = accelerator.num_processes, accelerator.device.type
    kind = "CUDA GPU" if device == "cuda" else device.upper()
    group = f" ({torch.distributed.get_backend()})" if count > 1 else ""
    precision = "fp32" if accelerator.mixed_precision == "no" else f"{accelerator.mixed_precision} autocast"
    return f"{count} {kind} process{'es' if count > 1 else ''}{group}, {precision}"


def check_gpus_per_machine() -> None:
    """More processes on this machine than GPUs: accelerate would give one of them a GPU that
    does not exist. A machine's own problem (another may have enough): printed once per machine."""
    processes, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if processes > gpus:
        raise LocalError(f"{processes} processes were started on this machine but it has {gpus} usable GPU(s); "
                        f"start at most {gpus} per machine (--nproc_per_node / --num_processes), or pass --cpu to "
                        "train on CPU processes")


LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun and accelerate set


def check_launch() -> None:
    """Before the group forms: a process count without the variables to find the others by
    (a hand-set WORLD_SIZE, a bare ``srun``) would fail deep inside torch, or train alone."""
    launched = launched_processes()
    missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    if launched > 1 and missing:
        raise UserError(f"WORLD_SIZE={launched} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                        "not, so these processes cannot form one job; start them with torchrun or accelerate launch "
                        "(see the README's launchers), or unset WORLD_SIZE to train in one process")


# What covid_ddp runs: data parallelism in which every process holds the whole model (accelerate's
# DDP), which the step's gradient sync, the checkpoints and the consolidated weights are written for.
SUPPORTED_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU")
SUPPORTED = ("distributed_type NO (one process), MULTI_CPU or MULTI_GPU (DDP over CPU processes or CUDA GPUs, "
             "one machine or several), with any mixed_precision and dynamo_backend")
# accelerate launch sets these from the accelerate config for engines that shard or place the model
# themselves: FSDP's checkpoint gathers on rank 0 alone, DeepSpeed's engine owns the gradient sync.
SHARDING_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
                    "ACCELERATE_USE_PARALLELISM_CONFIG": "a parallelism config (tensor or context parallelism)"}


def refuse_unsupported_engine() -> None:
    """Before the group forms: an accelerate config that asks for a sharding engine would be run
    as something else (or hang at the first checkpoint), so it is named instead."""
    asked = [name for variable, name in SHARDING_ENGINES.items()
             if os.environ.get(variable, "false").lower() == "true"]
    if asked:
        raise UserError(f"the accelerate config asks for {asked[0]}, which covid_ddp does not run; it runs "
                        f"{SUPPORTED} (docs/training.md#supported-accelerate-configurations)")


def refuse_unsupported_type(distributed_type) -> None:
    """After it: accelerate chose a backend covid_ddp does not drive (XLA/TPU, NPU, XPU, ...)."""
    chosen = getattr(distributed_type, "value", str(distributed_type))
    if chosen not in SUPPORTED_TYPES:
        raise UserError(f"accelerate chose distributed_type {chosen}, which covid_ddp does not run; it runs "
                        f"{SUPPORTED} (docs/training.md#supported-accelerate-configurations)")


def refuse_independent_launch(num_processes: int) -> None:
    """After it: the launcher said N processes but accelerate formed no group (an accelerator
    type this project does not drive), so N runs would overwrite each other's files."""
    launched = launched_processes()
    if launched > 1 and num_processes == 1:
        raise UserError(f"{launched} processes were launched but accelerate joined none of them into a group, so each "
                        "would train alone and overwrite the others' files; pass --cpu to train on CPU processes")


_stores = []  # kept alive until the group forms: a multi-tenant store's server lives with its owners


def exchange_before_group(value: dict, timeout: datetime.timedelta) -> list[dict]:
    """Every process's ``value`` (JSON), in rank order, before the process group exists.

    Through the launcher's TCP store (torchrun's agent hosts it; without an agent, rank 0 serves
    it, sharing the port with the group's own store later). An agent's store outlives a restart:
    on one machine the keys are this attempt's own; the machines of a job count restarts apart,
    so there a restarted attempt may read its peers' previous values, the same unless a machine
    was replaced by other hardware.
    """
    world = launched_processes()
    if world == 1:
        return [value]
    rank = int(os.environ["RANK"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                       is_master=rank == 0 and not agent_store, timeout=timeout, multi_tenant=True)
    _stores.append(store)
    one_machine = world == int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    prefix = f"covid_ddp/view/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') if one_machine else 'any'}"
    store.set(f"{prefix}/{rank}", json.dumps(value))
    return [json.loads(store.get(f"{prefix}/{other}")) for other in range(world)]


def join_restarted_group(cpu: bool, timeout: datetime.timedelta) -> None:
    """A group restarted by torchrun (``--max-restarts``) forms under a key prefix of its own.

    torchelastic hands every attempt the same store (seen with torch 2.13, also
    pytorch/pytorch#167288), still holding the dead attempt's addresses: a restarted rank
    that reads its peer's key before the new peer wrote it connects to a dead port and the
    restart fails (most of the time, in our 2-process tests). accelerate uses a process group
    that already exists, so the group is formed here, with this attempt's keys apart.

    On one machine only: there every process has the same restart count, from the one
    torchrun. The agents of several machines count restarts each their own way (a machine
    restarted for another's failure does not count it), so their prefixes could differ.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    one_machine = world == int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    if attempt == "0" or world == 1 or not one_machine or torch.distributed.is_initialized() or \
            os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                       is_master=False, timeout=timeout)
    backend = "gloo" if cpu or not torch.cuda.is_available() else "nccl"
    if backend == "nccl":  # NCCL binds to the current device: this process's, as accelerate would set it
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group(backend, timeout=timeout, rank=int(os.environ["RANK"]), world_size=world,
                                         store=torch.distributed.PrefixStore(f"covid_ddp/attempt_{attempt}", store))


# --- work the ranks agree on ----------------------------------------------------------------


@dataclass
class _Outcome:
    error: str | None = None
    value: Any = None


def on_main_process(accelerator, work: Callable[[], Any], what: str, *, patient: bool = False) -> Any:
    """Run ``work`` on the main process; every rank returns its result (keep it small: it is
    pickled to the others) or raises ``JobFailed`` if it failed. Called by every rank at the
    same point; ``what`` completes "cannot ..." in the message of an unexpected OSError.
    ``patient``: the others wait for it without the collective timeout (a download)."""
    mine = _attempt(work, what) if accelerator.is_main_process else _Outcome()
    return _agree(accelerator, mine, share_value=True, patient=patient)


def on_every_process(accelerator, work: Callable[[], Any], what: str, *, here: bool = True,
                     patient: bool = False) -> Any:
    """Run ``work`` on every rank where ``here`` is true; each returns its own result, or all
    raise ``JobFailed`` if it failed on any of them."""
    mine = _attempt(work, what) if here else _Outcome()
    _agree(accelerator, _Outcome(mine.error), share_value=False, patient=patient)
    return mine.value


def gather_values(accelerator, value, patient: bool = False) -> list:
    """Collective: every rank's (small, picklable) ``value``, in rank order, on every rank.
    ``patient``: through a group whose collectives wait a week, not ``--dist-timeout``."""
    if accelerator.num_processes == 1:
        return [value]
    if not patient:
        return gather_object([value])
    gathered = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, value, group=_patient_group())
    return gathered


# A slow first download must not end the job: the others wait for it in a group without a
# practical deadline (a dead main process still ends the job: its launcher stops the others).
PATIENT_TIMEOUT = datetime.timedelta(days=7)
_patient = {}  # the default group it was made in -> the patient group


def _patient_group():
    """A gloo group over every rank, made by all of them at their first patient agreement."""
    world = torch.distributed.group.WORLD
    if world not in _patient:
        _patient.clear()  # of a group destroyed since
        _patient[world] = torch.distributed.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
    return _patient[world]


def same_on_every_process(accelerator, value, what: str) -> None:
    """Refuse, on every rank, a ``value`` (e.g. the data's sha256) that differs from the main process's."""
    values = gather_values(accelerator, (value, socket.gethostname()))
    for rank, (theirs, host) in enumerate(values):
        if theirs != values[0][0]:
            raise JobFailed(f"process {rank} (on {host}) has other {what} than the main process ({theirs} vs "
                            f"{values[0][0]}); give every machine the same files")


def _attempt(work: Callable[[], Any], what: str) -> _Outcome:
    try:
        return _Outcome(value=work())
    except Interrupted:
        raise  # this rank's own stop, with its exit code: the others have theirs, or their launcher's
    except UserError as error:
        return _Outcome(error=str(error))
    except OSError as error:  # a full disk, a read-only or missing folder, no flock on this filesystem
        where = f"{error.filename}: " if error.filename else ""
        return _Outcome(error=f"cannot {what}: {where}{error.strerror or error}")
    except Exception as error:  # a bug: keep its traceback, on the rank where it happened
        traceback.print_exc()
        return _Outcome(error=f"could not {what}: {type(error).__name__}: {error} (traceback above)")


def _agree(accelerator, mine: _Outcome, share_value: bool, patient: bool = False) -> Any:
    """One all-gather of every rank's outcome; the first failure (by rank) is raised everywhere."""
    outcomes = gather_values(accelerator, (mine.error, mine.value if share_value else None, socket.gethostname()),
                             patient)
    for rank, (error, _, host) in enumerate(outcomes):
        if error is not None:
            raise JobFailed(error if rank == 0 else f"{error} (process {rank}, on {host})")
    return outcomes[0][1] if share_value else mine.value


# --- a rank that vanished -------------------------------------------------------------------

# What gloo raises in a collective whose peer process died (a plain RuntimeError), and NCCL's.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def lost_another_process(error: BaseException) -> bool:
    """True for the error a collective raises when another rank of the job died mid-way (not a
    timeout: a slow process is not a dead one)."""
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _PEER_GONE)
