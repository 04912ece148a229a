"""Data-parallel training processes, through Accelerate: one process unless launched by `verbo train --nproc N`
(torchrun underneath) or `accelerate launch -m verbovision train ...` (DeepSpeed / FSDP through its config files).

With FSDP (FSDP2, `fsdp_version: 2`) each process holds only part of every parameter: work that reads the whole
model (validation, checkpoints, saving) runs on every process (`sharded`), which gather their parts for the main
process to write.

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
from pathlib import Path
from typing import TypeVar

import torch
import yaml

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
        if self.accelerator.distributed_type == DistributedType.MULTI_CPU and _env_flag("ACCELERATE_USE_FSDP"):
            _fsdp_on_cpu(self.accelerator)
        self.rank = self.accelerator.process_index
        self.count = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.distributed = self.accelerator.distributed_type != DistributedType.NO
        self.sharded = self.accelerator.distributed_type == DistributedType.FSDP
        """Parameters sharded over the processes (FSDP): every process must take part in whatever reads the whole
        model (validation, `full_state`, `optimizer_state`), not only the main one."""
        if self.sharded and not self.accelerator.is_fsdp2:
            from .errors import ConfigError

            raise ConfigError("FSDP: only FSDP2 is supported (fsdp_version: 2 in the Accelerate config); FSDP1 needs "
                              "use_orig_params for frozen parameters and a wrapped model for every forward pass")

    def prepare(self, model, optimizer):
        """The model and optimizer wrapped for the launch's engine (DDP, DeepSpeed, FSDP); unchanged when alone.
        Optimizer state already loaded (a resumed run) carries over to the sharded parameters."""
        if not self.distributed:
            return model, optimizer
        if not self.sharded:
            return self.accelerator.prepare(model, optimizer)
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        _wrap_blocks_present(self.accelerator.state.fsdp_plugin, model)
        resumed = get_optimizer_state_dict(model, optimizer) if optimizer.state else None
        model, optimizer = self.accelerator.prepare(model, optimizer)
        if resumed:
            optimizer.optimizer.state.clear()  # keyed by the parameters before sharding
            self.load_optimizer_state(model, optimizer.optimizer, resumed)
        return model, optimizer

    def full_state(self, model, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """The model's state (or its trainable parameters) as whole CPU tensors, by parameter name. Sharded: every
        process must call it; the main process gets the tensors, the others an empty dict."""
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if not self.sharded:
            state = model.state_dict() if not trainable_only else dict(model.named_parameters())
            return {n: t.detach().cpu().contiguous() for n, t in state.items() if not trainable_only or n in trainable}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only))
        return {n: t for n, t in state.items() if not trainable_only or n in trainable} if self.is_main else {}

    def load_state(self, model, state: dict[str, torch.Tensor]) -> None:
        """Copy whole tensors (some of the model's parameters, by name) into the model; sharded: every process
        passes the same tensors and keeps its part."""
        if not self.sharded:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in state.items():
                    params[name].copy_(value)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        unknown = set(state) - {n for n, _ in model.named_parameters()}
        if unknown:
            raise KeyError(f"not parameters of the model: {sorted(unknown)[:5]}")
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))

    def optimizer_state(self, model, optimizer) -> dict:
        """`optimizer.state_dict()`; sharded (every process calls it): the whole state by parameter name, on the
        main process only."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
        state = get_optimizer_state_dict(model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.is_main else {}

    @staticmethod
    def load_optimizer_state(model, optimizer, state: dict) -> None:
        """Restore what `optimizer_state` returned, whichever way the parameters are (or were) split."""
        if not all(isinstance(p, str) for group in state["param_groups"] for p in group["params"]):
            optimizer.load_state_dict(state)  # saved by one process or DDP: parameters by position
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

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
        if norm is None:
            return float("nan")
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a DTensor

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss * self.count)  # DDP and FSDP average gradients over processes: undo the mean

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


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def _fsdp_on_cpu(accelerator) -> None:
    """Turn CPU processes (gloo) that `accelerate launch` started with an FSDP config into FSDP ones. Accelerate
    1.15 only selects FSDP on accelerators (AcceleratorState.__init__ reads ACCELERATE_USE_FSDP only for MULTI_GPU,
    MULTI_XPU...; CPU processes silently get DDP), while torch's FSDP2 (`fully_shard`) runs on a CPU device mesh."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment `accelerate launch` sets
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP


def _wrap_blocks_present(plugin, model) -> None:
    """Shard per transformer block: the model's `_no_split_modules` classes that it contains. Accelerate takes them
    all and fails on a class the model lacks (SigLIP's lists its text embeddings and attention-pooling head, which a
    VLM's vision tower does not have)."""
    if plugin.transformer_cls_names_to_wrap is not None:  # fsdp_transformer_layer_cls_to_wrap in the config
        return
    present = {type(m).__name__ for m in model.modules()}
    plugin.transformer_cls_names_to_wrap = [c for c in getattr(model, "_no_split_modules", None) or [] if c in present]


def launch(nproc: int, argv: list[str], accelerate_config: str | None = None) -> int:
    """Run `verbovision ARGV` in `nproc` processes: torchrun, or `accelerate launch` with a config file."""
    if accelerate_config:
        # A port of its own unless the config sets one (several machines): concurrent runs on one machine would
        # otherwise all meet on Accelerate's default port and wait for each other forever.
        port = [] if "main_process_port" in yaml.safe_load(Path(accelerate_config).read_text()) else \
            ["--main_process_port", str(_free_port())]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
                   "--num_processes", str(nproc), *port, "-m", "verbovision", *argv]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "verbovision", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(command, env=env).returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
