"""Training on several processes — GPUs or CPU processes, on one or several nodes — with Lightning Fabric.

Fabric owns the processes and what runs between them: it spawns one worker process per device
(``trainer.devices``, per node), sets up the process group (NCCL on GPUs, gloo on CPUs; several
nodes meet at ``MASTER_ADDR``/``MASTER_PORT``), wraps the model in DistributedDataParallel and
provides the collectives (all-reduce, broadcast, barrier). The training engine sees only the
small :class:`Processes` interface below, so the same loop runs in one process (no Fabric, no
process group: :class:`SingleProcess`) or in many (:class:`FabricProcesses`).

Why spawn and not Fabric's default ``ddp`` launcher: that one re-runs the command line
(``sys.argv``) once per extra rank, which under Kedro would re-run the whole ``kedro run`` —
the data pipeline and kedro-mlflow's run included — in every process. ``ddp_spawn`` starts only
the training function in the workers; the Kedro node, the catalog and MLflow stay in the launching
process, and within the workers only rank 0 writes checkpoints and logs metrics.

Precision stays with :func:`defect_pipeline.ml.device.resolve_precision` (autocast + GradScaler in
the engine) rather than Fabric's precision plugins: Fabric would pick bf16 on any CPU that has the
instructions, and on the AVX2-only machines this project is tested on bf16 runs 50–400× slower.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from defect_pipeline.ml.device import resolve_precision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerSettings:
    """The resolved ``trainer`` block: no ``auto`` left."""

    accelerator: str  # "cpu" | "cuda"
    devices: int  # processes per node
    num_nodes: int
    strategy: str  # "single" | "ddp"
    precision: str  # "fp32" | "bf16" | "fp16"
    channels_last: bool | str = False  # trainer.channels_last as given (auto is resolved per backbone)
    compile: bool = False

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def describe(self) -> dict[str, Any]:
        return {"accelerator": self.accelerator, "devices": self.devices, "num_nodes": self.num_nodes,
                "strategy": self.strategy, "world_size": self.world_size, "precision": self.precision}


def free_memory_bytes(device: str) -> float | None:
    """Free memory of the training device (CUDA: free GPU memory; CPU: MemAvailable)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return float(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resolve_trainer(*, accelerator: str, devices: int | str, strategy: str, num_nodes: int,
                    precision: str, channels_last: bool | str = False, compile: bool = False) -> TrainerSettings:
    """Resolve ``auto`` values of the ``trainer`` block against this machine.

    Raises:
        ValueError: CUDA asked for but not available, or more GPUs asked for than visible.
    """
    if accelerator == "gpu":
        accelerator = "cuda"
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.accelerator is cuda but CUDA is not available on this machine; "
                         "use trainer.accelerator: auto or cpu")
    visible = torch.cuda.device_count() if accelerator == "cuda" else None
    if devices == "auto":
        devices = visible if visible else 1
    devices = int(devices)
    if visible is not None and devices > visible:
        raise ValueError(f"trainer.devices is {devices} but only {visible} GPU(s) are visible; lower "
                         "trainer.devices or set CUDA_VISIBLE_DEVICES")
    world = devices * int(num_nodes)
    resolved = "ddp" if world > 1 else "single"
    if strategy == "ddp" and world == 1:
        logger.info("trainer.strategy ddp with a single process: training in this process")
    return TrainerSettings(accelerator=accelerator, devices=devices, num_nodes=int(num_nodes), strategy=resolved,
                           precision=resolve_precision(precision, accelerator), channels_last=channels_last,
                           compile=compile)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``, in order, no padding.

    For evaluation: unlike :class:`~torch.utils.data.distributed.DistributedSampler`, no sample
    is repeated to even out the shards, so the ranks' sums add up to exactly the whole set.
    """

    def __init__(self, dataset: Dataset, *, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Processes(Protocol):
    """What the training engine needs to know about the processes it runs in."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool: ...

    def wrap(self, model: nn.Module) -> nn.Module: ...

    def no_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager: ...

    def sum(self, value: Tensor) -> Tensor: ...

    def broadcast(self, value: Any) -> Any: ...

    def barrier(self) -> None: ...

    def train_sampler(self, dataset: Dataset, seed: int) -> Sampler | None: ...

    def eval_sampler(self, dataset: Dataset) -> Sampler | None: ...


class SingleProcess:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    @property
    def is_main(self) -> bool:
        return True

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def no_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sum(self, value: Tensor) -> Tensor:
        return value

    def broadcast(self, value: Any) -> Any:
        return value

    def barrier(self) -> None:
        return None

    def train_sampler(self, dataset: Dataset, seed: int) -> Sampler | None:
        return None

    def eval_sampler(self, dataset: Dataset) -> Sampler | None:
        return None


class FabricProcesses:
    """One rank of a Fabric-launched group (see the module docstring)."""

    def __init__(self, fabric: Any) -> None:
        self.fabric = fabric
        self.rank = int(fabric.global_rank)
        self.world_size = int(fabric.world_size)
        self.device = fabric.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel (through Fabric): gradients are averaged over the ranks in backward."""
        return self.fabric.setup_module(model)

    def no_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on accumulation batches that do not step the optimizer."""
        return self.fabric.no_backward_sync(module, enabled=enabled)

    def sum(self, value: Tensor) -> Tensor:
        """Sum over the ranks (on the process group's device: NCCL cannot reduce CPU tensors)."""
        reduced = self.fabric.all_reduce(value.detach().to(self.device).clone(), reduce_op="sum")
        return reduced.to(value.device)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (decisions that must agree, e.g. the time budget)."""
        return self.fabric.broadcast(value, src=0)

    def barrier(self) -> None:
        self.fabric.barrier()

    def train_sampler(self, dataset: Dataset, seed: int) -> Sampler:
        """A shuffled shard per rank, reshuffled per epoch from ``seed`` (``set_epoch``).

        Shards are padded to equal length (DistributedSampler), so every rank takes the same
        number of optimizer steps — DDP needs that.
        """
        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)

    def eval_sampler(self, dataset: Dataset) -> Sampler:
        return ShardSampler(dataset, rank=self.rank, world_size=self.world_size)


def average_gradients(processes: Processes, params: Iterator[nn.Parameter] | list[nn.Parameter]) -> None:
    """Average the gradients of parameters outside the DDP-wrapped model (the learned loss weights)."""
    if processes.world_size == 1:
        return
    for param in params:
        if param.grad is not None:
            param.grad.copy_(processes.sum(param.grad) / processes.world_size)


def all_finite(processes: Processes, value: float) -> bool:
    """True when ``value`` is finite on every rank (so that all ranks stop together)."""
    if processes.world_size == 1:
        return math.isfinite(value)
    bad = processes.sum(torch.tensor(0.0 if math.isfinite(value) else 1.0, device=processes.device))
    return float(bad) == 0.0


class _Payload:
    """Pickled arguments, opaque to Fabric's argument walk (bytes would be walked as a sequence of ints)."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.data = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self) -> tuple[Any, ...]:
        return pickle.loads(self.data)  # noqa: S301 - bytes this process family pickled itself


def _fabric_entry(fabric: Any, function: Callable[..., Any], payload: _Payload, result_file: str) -> None:
    """One worker: run ``function``; rank 0 pickles its value into ``result_file``.

    Fabric would hand the value back through a multiprocessing queue that the launcher reads only after
    joining the workers: a value larger than the pipe's buffer (a stage's per-step history, a shard's
    prediction rows) then blocks rank 0 at exit and the launcher waits for it forever.
    """
    result = function(FabricProcesses(fabric), *payload.load())
    if fabric.global_rank == 0:
        partial = f"{result_file}.partial"
        with open(partial, "wb") as handle:
            pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, result_file)


def check_node_environment(settings: TrainerSettings, *, joining: bool) -> None:
    """Several nodes: ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK`` set, node 0 launching, others joining."""
    if settings.num_nodes == 1:
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if not os.environ.get(name)]
    if missing:
        raise ValueError(f"trainer.num_nodes is {settings.num_nodes}: set {', '.join(missing)} on every node "
                         "(the address and a free port of node 0, and this node's rank; see docs/distributed.md)")
    node_rank = int(os.environ["NODE_RANK"])
    if not 0 <= node_rank < settings.num_nodes:
        raise ValueError(f"NODE_RANK is {node_rank} but trainer.num_nodes is {settings.num_nodes}")
    if joining and node_rank == 0:
        raise ValueError("NODE_RANK 0 trains through `kedro run --pipeline=<stage>`; `kedro join-training` is "
                         "for the other nodes")
    if not joining and node_rank != 0:
        raise ValueError(f"this is node {node_rank}: `kedro run` trains on node 0 (NODE_RANK=0); here run "
                         "`kedro join-training --stage <stage>` with the same --env and --params")


def launch(settings: TrainerSettings, function: Callable[..., Any], *args: Any, joining: bool = False) -> Any:
    """Run ``function(processes, *args)`` on every process of ``settings`` on this node; rank 0's return value.

    One process: called here, with :class:`SingleProcess`. More: Fabric spawns ``devices`` worker
    processes on this node (``function`` and ``args`` must be picklable: module-level function,
    plain data, modules) and the call returns when all processes of all nodes have finished. A
    failing worker stops the others and its error is raised here; an interrupt (Ctrl-C, SIGTERM)
    here stops the workers. ``joining``: this is a node other than 0 (its return value is None).
    """
    check_node_environment(settings, joining=joining)
    if settings.world_size == 1:
        device = "cuda" if settings.accelerator == "cuda" else "cpu"
        return function(SingleProcess(device), *args)
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator=settings.accelerator, devices=settings.devices, num_nodes=settings.num_nodes,
                    strategy="ddp_spawn", precision="32-true")
    logger.info("launching %d training processes on this node (%d in all, %s)", settings.devices,
                settings.world_size, settings.accelerator)
    # The arguments travel as one pickled blob: each worker gets its own copy of the weights. Passed
    # as objects, torch would move CPU tensors to shared memory (all ranks stepping one copy), and
    # Fabric's own unsharing pass cannot walk into frozen dataclasses such as EngineConfig.
    with tempfile.TemporaryDirectory(prefix="defect_pipeline_launch_") as folder:
        result_file = os.path.join(folder, "rank0_result.pkl")
        try:
            fabric.launch(_fabric_entry, function, _Payload(args), result_file)
        except BaseException:
            for child in multiprocessing.active_children():
                child.terminate()
            raise
        if joining:
            return None
        with open(result_file, "rb") as handle:
            return pickle.load(handle)  # noqa: S301 - written by this launch's rank 0
