"""Data-parallel training processes, through Accelerate: one process unless launched by `verbo train --nproc N`
(torchrun underneath) or `accelerate launch -m verbovision train ...` (DeepSpeed / FSDP through its config files).

Every process reads the same data in the same order; each takes its own slice of every global micro-batch
(`batch_size` examples per process). The loss is divided by the target-token count of the whole step across all
processes and scaled by the process count (DDP averages gradients), so N processes compute exactly the step one
process would on the same global batch. Logging, checkpoints, validation and saving happen on the main process while
the others wait.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import torch

T = TypeVar("T")


class Processes:
    """This process's place among the training processes (rank, count) and the few collectives training needs."""

    def __init__(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, DistributedType

        # cpu=True lets Accelerate run several CPU processes (gloo) when torchrun launched them. Some trainable
        # parameters take no part in the loss (a vision tower's final norm when the features come from an earlier
        # layer): DDP must not wait for their gradients.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.rank = self.accelerator.process_index
        self.count = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.distributed = self.accelerator.distributed_type != DistributedType.NO

    def prepare(self, model, optimizer):
        """The model and optimizer wrapped for the launch's engine (DDP, DeepSpeed, FSDP); unchanged when alone."""
        if not self.distributed:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model) if self.distributed else model

    def shard(self, micro_batch: list, per_process: int) -> tuple[list, float]:
        """This process's examples of a global micro-batch, and the weight of their loss. A process left without any
        (the epoch's last, short micro-batch) runs the first example with weight 0: every process must take part in
        each gradient reduction."""
        mine = micro_batch[self.rank * per_process : (self.rank + 1) * per_process]
        return (mine, 1.0) if mine else (micro_batch[:1], 0.0)

    def total(self, value: float) -> float:
        """The sum of `value` over all processes."""
        if not self.distributed:
            return value
        tensor = torch.tensor([float(value)], device=self.accelerator.device, dtype=torch.float64)
        return float(self.accelerator.reduce(tensor, reduction="sum"))

    def gathered(self, items: list) -> list:
        """Every process's `items`, concatenated in rank order."""
        if not self.distributed:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def clip_gradients(self, model, max_norm: float) -> float:
        """Clip the trainable parameters' gradients to `max_norm`; their norm before clipping (NaN where the engine
        clips by itself, as DeepSpeed does from its config). Sharded engines (FSDP, ZeRO) need Accelerate's
        clipping: each process holds only part of each gradient."""
        params = [p for p in model.parameters() if p.requires_grad]
        if self.distributed:
            norm = self.accelerator.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float("nan") if norm is None else float(norm)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss * self.count)  # DDP averages gradients over processes: undo the mean

    def wait(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    def main_first(self, work: Callable[[], T]) -> T:
        """Run `work` on the main process, then on the others (which find its files written)."""
        result = work() if self.is_main else None
        self.wait()
        return result if self.is_main else work()

    def share(self, value: T) -> T:
        """The main process's `value`, on every process."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]


@lru_cache(maxsize=1)
def processes() -> Processes:
    return Processes()


def launch(nproc: int, argv: list[str], accelerate_config: str | None = None) -> int:
    """Run `verbovision ARGV` in `nproc` processes: torchrun, or `accelerate launch` with a config file."""
    if accelerate_config:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
                   "--num_processes", str(nproc), "-m", "verbovision", *argv]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "verbovision", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(command, env=env).returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
