"""Data-parallel training processes, through Accelerate: one process unless launched by `verbo train --nproc N`
(torchrun underneath) or `accelerate launch -m verbovision train ...` (DeepSpeed / FSDP through its config files).

With FSDP (FSDP2, `fsdp_version: 2`) and DeepSpeed ZeRO-2/3 each process holds only part of every parameter (FSDP,
ZeRO-3) or of the optimizer's fp32 weights and states (ZeRO-2): work that reads the whole model (validation,
checkpoints, saving) runs on every process (`sharded`), which gather their parts for the main process to write.
DeepSpeed accumulates the recipe's grad_accum micro-batches itself and steps once per optimizer step
(`managed_gradient_accumulation: false`).

Every process reads the same data in the same order; each takes its own slice of every global micro-batch
(`batch_size` examples per process). The loss is divided by the target-token count of the whole step across all
processes and scaled by the process count (DDP averages gradients), so N processes compute exactly the step one
process would on the same global batch. Logging, checkpoints, validation and saving happen on the main process while
the others wait."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import yaml

from ..errors import RANK_ERRORS

T = TypeVar("T")


class Processes:
    """This process's place among the training processes (rank, world_size) and the few collectives training needs,
    named as in torch.distributed and Accelerate. A run creates one and passes it to what needs it."""

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
        elif self.accelerator.distributed_type == DistributedType.MULTI_CPU and _env_flag("ACCELERATE_USE_DEEPSPEED"):
            _deepspeed_on_cpu(self.accelerator)
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main_process = self.accelerator.is_main_process
        self.kind = self.accelerator.distributed_type
        self.distributed = self.kind != DistributedType.NO
        self.deepspeed = self.kind == DistributedType.DEEPSPEED
        if self.deepspeed:
            _configure_deepspeed(self.accelerator.state.deepspeed_plugin)
        self.sharded = self.kind in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        """Parameters (FSDP, ZeRO-3) or the optimizer's fp32 weights and states (ZeRO-2) sharded over the
        processes: every process must take part in whatever reads them (validation, `full_state`,
        `optimizer_state`), not only the main one."""
        self._engine = None  # DeepSpeed: the engine of the stage being trained
        if self.kind == DistributedType.FSDP and not self.accelerator.is_fsdp2:
            from ..errors import ConfigError

            raise ConfigError("FSDP: only FSDP2 is supported (fsdp_version: 2 in the Accelerate config); FSDP1 needs "
                              "use_orig_params for frozen parameters and a wrapped model for every forward pass")

    def prepare(self, model, optimizer):
        """The model and optimizer wrapped for the launch's engine (DDP, DeepSpeed, FSDP); unchanged when alone.
        Optimizer state already loaded (a resumed run) carries over to the sharded parameters."""
        if not self.distributed:
            return model, optimizer
        if self.accelerator.distributed_type != self.kind:  # never fall back silently (to DDP) on a later stage
            raise RuntimeError(f"Accelerate switched from {self.kind} to {self.accelerator.distributed_type}")
        if self.deepspeed:
            return self._prepare_deepspeed(model, optimizer)
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

    def _prepare_deepspeed(self, model, optimizer):
        """`deepspeed.initialize` through Accelerate: the engine (in place of the model) and Accelerate's wrapper of
        the ZeRO optimizer, whose `step`/`zero_grad` do nothing (`step` below drives the engine). The torch
        optimizer stays the ZeRO optimizer's inner one (same parameter groups), so the stage's LR schedule keeps
        steering it. Optimizer state loaded before (a resumed run) is moved onto ZeRO's fp32 partitions."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if self._engine is not None:  # the previous stage's engine: drop it (its hooks, buffers, model)
            self.accelerator.free_memory()
            self._engine = None
        resumed = get_optimizer_state_dict(model, optimizer) if optimizer.state else None  # by parameter name
        optimizer.state.clear()  # keyed by parameters that ZeRO replaces with flat fp32 partitions
        engine, wrapped = self.accelerator.prepare(model, optimizer)
        self._engine = engine
        if resumed:
            _deepspeed_load_optimizer_state(engine.module, engine.optimizer, resumed)
        return engine, wrapped

    def full_state(self, model, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """The model's state (or its trainable parameters) as whole CPU tensors, by parameter name. Sharded: every
        process must call it; the main process gets the tensors, the others an empty dict."""
        if self.deepspeed:
            return _deepspeed_full_state(model, trainable_only, self.is_main_process)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if not self.sharded:
            state = model.state_dict() if not trainable_only else dict(model.named_parameters())
            return {n: t.detach().cpu().contiguous() for n, t in state.items() if not trainable_only or n in trainable}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only))
        if not self.is_main_process:
            return {}
        return {n: t for n, t in state.items() if not trainable_only or n in trainable}

    def load_state(self, model, state: dict[str, torch.Tensor]) -> None:
        """Copy whole tensors (some of the model's parameters, by name) into the model; sharded: every process
        passes the same tensors and keeps its part."""
        if self.deepspeed:
            _deepspeed_load_state(model, state)
            return
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
        if self.deepspeed:
            return _deepspeed_optimizer_state(model, optimizer, self.is_main_process)
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
        state = get_optimizer_state_dict(model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.is_main_process else {}

    @staticmethod
    def load_optimizer_state(model, optimizer, state: dict) -> None:
        """Restore what `optimizer_state` returned, whichever way the parameters are (or were) split."""
        if not all(isinstance(p, str) for group in state["param_groups"] for p in group["params"]):
            optimizer.load_state_dict(state)  # saved by one process or DDP: parameters by position
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def unwrap_model(self, model):
        return self.accelerator.unwrap_model(model) if self.distributed else model

    def shard(self, micro_batch: list, per_process: int) -> tuple[list, float]:
        """This process's examples of a global micro-batch, and the weight of their loss. A process left without any
        (the epoch's last, short micro-batch) runs the first example with weight 0: every process must take part in
        each gradient reduction."""
        mine = micro_batch[self.rank * per_process : (self.rank + 1) * per_process]
        return (mine, 1.0) if mine else (micro_batch[:1], 0.0)

    def all_reduce_sum(self, value):
        """The sum of `value` (a number, or what `float()` reads) over all processes; one process: `value` itself."""
        if not self.distributed:
            return value
        tensor = torch.tensor([float(value)], device=self.accelerator.device, dtype=torch.float64)
        return float(self.accelerator.reduce(tensor, reduction="sum"))

    def all_gather_object(self, items: list) -> list:
        """Every process's `items`, concatenated in rank order, on every process (Accelerate's gather_object)."""
        if not self.distributed:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def step(self, model, optimizer, max_norm: float) -> float | torch.Tensor:
        """Clip the accumulated gradients to `max_norm` and step the optimizer; returns the gradient norm before
        clipping (a tensor on the device, unread, where torch computes it). DeepSpeed: the engine reduces, clips and
        steps at once (its `step()` is the accumulation boundary: `managed_gradient_accumulation: false`), clipping to
        this stage's `max_norm`."""
        if not self.deepspeed:
            # Sharded gradients (FSDP) need Accelerate's clipping: each process holds only part of each gradient.
            params = [p for p in model.parameters() if p.requires_grad]
            clip = self.accelerator.clip_grad_norm_ if self.distributed else torch.nn.utils.clip_grad_norm_
            norm = clip(params, max_norm)
            optimizer.step()
            if norm is None:
                return float("nan")
            return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
        zero = model.optimizer
        zero.clip_grad = float(max_norm) if 0 < max_norm < float("inf") else 0.0  # 0: DeepSpeed does not clip
        model.step()
        norm = model.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def backward(self, loss: torch.Tensor) -> None:
        # DDP, FSDP and ZeRO average gradients over processes: undo the mean.
        if self.deepspeed:  # the engine's own backward (ZeRO's gradient hooks); it accumulates until `step`
            self._engine.backward(loss * self.world_size, scale_wrt_gas=False)
            return
        self.accelerator.backward(loss * self.world_size)

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    def main_process_first(self, work: Callable[[], T]) -> T:
        """Run `work` on the main process, then on the others (which find its files written)."""
        result = work() if self.is_main_process else None
        self.barrier()
        return result if self.is_main_process else work()

    def broadcast_object(self, value: T) -> T:
        """The main process's `value`, on every process."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]


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
    _set_distributed_type(accelerator, DistributedType.FSDP)


def _deepspeed_on_cpu(accelerator) -> None:
    """Turn CPU processes (gloo) that `accelerate launch` started with a DeepSpeed config into DeepSpeed ones.
    Accelerate 1.15 ignores ACCELERATE_USE_DEEPSPEED when `cpu=True` (AcceleratorState.__init__: `... and not
    cpu`; with cpu=False and no GPU every process would think it is process 0 of 1), while DeepSpeed's ZeRO runs on
    its CPU accelerator over the gloo process group Accelerate already set up."""
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from ..errors import ConfigError

    try:
        import deepspeed.ops
    except ImportError as error:
        raise ConfigError(f"DeepSpeed config: deepspeed is not importable ({error}); pip install deepspeed") from error
    # DeepSpeed's CPU communication backend would JIT-compile its shared-memory all-reduce (C++, about a minute on
    # 2 cores, and a compiler needed) when it starts; only DeepSpeed inference's `inference_all_reduce` uses it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    state = accelerator.state
    plugin = DeepSpeedPlugin()  # from the ACCELERATE_DEEPSPEED_* environment `accelerate launch` sets
    plugin.set_mixed_precision(state._mixed_precision)
    state._mixed_precision = "no"  # DeepSpeed casts the model itself, as Accelerate arranges on GPUs
    plugin.select(_from_accelerator_state=True)
    state.deepspeed_plugins = plugin
    _set_distributed_type(accelerator, DistributedType.DEEPSPEED)
    accelerator.deepspeed_engine_wrapped = None


def _set_distributed_type(accelerator, kind) -> None:
    """Switch the launch's engine for good: every later `AcceleratorState()` (Accelerate makes one in each
    AcceleratedOptimizer, i.e. each `prepare`) copies PartialState's distributed_type over its own, which would turn
    the next stage back into DDP."""
    from accelerate.state import PartialState

    accelerator.state.distributed_type = kind
    PartialState._shared_state["distributed_type"] = kind


def _configure_deepspeed(plugin) -> None:
    """Fit the DeepSpeed config to VerboVision's loop: the recipe's grad_accum micro-batches go through
    `engine.backward` and then one `engine.step()`, which is the accumulation boundary
    (`managed_gradient_accumulation: false`, DeepSpeed >= 0.19.8); the loss is already divided by the step's target
    tokens, so DeepSpeed must not divide by its own gradient_accumulation_steps (kept at 1)."""
    import deepspeed
    from packaging.version import Version

    from ..errors import ConfigError

    config = plugin.deepspeed_config
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if Version(deepspeed.__version__) < Version("0.19.8"):  # managed_gradient_accumulation for ZeRO-2 and -3
        raise ConfigError(f"DeepSpeed {deepspeed.__version__}: too old; VerboVision needs deepspeed>=0.19.8 "
                          "(managed_gradient_accumulation: false)")
    if stage not in (2, 3):  # stages 0/1 (with bf16: DeepSpeed's BF16_Optimizer) keep their state another way
        raise ConfigError(f"DeepSpeed config: zero_stage {stage} is not supported; use 2 or 3 (or plain DDP)")
    if config.get("gradient_accumulation_steps", "auto") not in (1, "auto"):
        raise ConfigError("DeepSpeed config: gradient_accumulation_steps must be 1; the recipe's grad_accum "
                          "accumulates")
    if stage == 3 and plugin.zero3_init_flag:
        raise ConfigError("DeepSpeed config: zero3_init_flag: true is not supported (the model is loaded whole, "
                          "then sharded); set it to false")
    config["gradient_accumulation_steps"] = 1
    config["managed_gradient_accumulation"] = False
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = 1  # only DeepSpeed's sample counting reads it
    # Transformers' from_pretrained would build every model (the stage's, and the whole copy the main process saves)
    # inside deepspeed.zero.Init while a ZeRO-3 config is registered: the model is loaded whole, then sharded.
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _ds_gathered(param) -> torch.Tensor:
    """A parameter's whole value on the CPU, every process calling: ZeRO's fp32 master weights for trained
    parameters (ZeRO-2/3), the gathered parameter for frozen ones under ZeRO-3, the parameter itself otherwise."""
    from deepspeed.utils import safe_get_full_fp32_param

    if param.requires_grad and (hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")):
        value = safe_get_full_fp32_param(param)
    elif hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            value = param.data.clone()
    else:
        value = param.detach()
    return value.cpu().contiguous()


def _deepspeed_full_state(model, trainable_only: bool, is_main: bool) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters(remove_duplicate=False))
    names = [n for n, p in model.named_parameters() if p.requires_grad] if trainable_only else list(model.state_dict())
    state, done = {}, {}
    with torch.no_grad():
        for name in names:
            if name in params:
                param = params[name]
                if id(param) not in done:
                    done[id(param)] = _ds_gathered(param)
                value = done[id(param)]
            else:  # a buffer: never sharded
                value = model.get_buffer(name).detach().cpu()
            if is_main:
                state[name] = value
    return state


def _deepspeed_load_state(model, state: dict[str, torch.Tensor]) -> None:
    """Whole tensors into the model's parameters, every process passing the same: before `prepare` they are plain
    tensors; after it, ZeRO's fp32 master weights and the model's own (ZeRO-3: partitioned) copy both change."""
    from deepspeed.utils import safe_set_full_fp32_param

    params = dict(model.named_parameters())
    unknown = set(state) - set(params)
    if unknown:
        raise KeyError(f"not parameters of the model: {sorted(unknown)[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            param = params[name]
            if hasattr(param, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    param.data.copy_(value)
            else:
                param.copy_(value)
            if param.requires_grad and (hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")):
                safe_set_full_fp32_param(param, value.to(torch.float32))


def _ds_inner(optimizer):
    """(ZeRO optimizer, torch optimizer) under Accelerate's wrapper."""
    from accelerate.optimizer import AcceleratedOptimizer

    zero = optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer
    return zero, zero.optimizer


def _ds_flat(zero) -> list[torch.Tensor]:
    """ZeRO's flat fp32 partitions, the tensors its torch optimizer steps and keeps state for."""
    flat = getattr(zero, "single_partition_of_fp32_groups", None)  # ZeRO-2: one per group
    return list(flat if flat is not None else zero.fp32_partitioned_groups_flat)  # ZeRO-3: one per sub-group


def _ds_param_groups(model, zero, base) -> list[dict]:
    """The torch optimizer's parameter groups with the model's parameter names in place of ZeRO's flat partitions."""
    names = {id(p): n for n, p in model.named_parameters()}
    lp_groups = getattr(zero, "bit16_groups", None)  # ZeRO-2: one list of parameters per group
    if lp_groups is None:  # ZeRO-3: sub-groups, each within one group
        by_group: dict[int, list] = {}
        for index, sub_group in enumerate(zero.fp16_groups):
            by_group.setdefault(zero.sub_group_to_group_id[index], []).extend(sub_group)
        lp_groups = [by_group.get(i, []) for i in range(len(base.param_groups))]
    return [{**{k: v for k, v in group.items() if k != "params"}, "params": [names[id(p)] for p in params]}
            for group, params in zip(base.param_groups, lp_groups)]


def _ds_link_states(zero) -> None:
    """ZeRO-2: point each parameter at its slice of the optimizer state again. DeepSpeed 0.19.8 links them once,
    right after the first group's first step, when the other groups have no state yet: with several parameter
    groups `safe_get_full_optimizer_state` then fails ("exp_avg not found in optimizer state fragment")."""
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def _deepspeed_optimizer_state(engine, optimizer, is_main: bool) -> dict:
    """The whole optimizer state by parameter name (the format FSDP's checkpoints have), every process calling."""
    from deepspeed.utils import safe_get_full_optimizer_state

    model = getattr(engine, "module", engine)
    zero, base = _ds_inner(optimizer)
    groups = _ds_param_groups(model, zero, base)
    flat_states = [base.state[p] for p in _ds_flat(zero) if base.state.get(p)]
    _ds_link_states(zero)
    state: dict[str, dict] = {}
    if flat_states:
        keys = [k for k, v in flat_states[0].items() if torch.is_tensor(v) and v.dim() > 0]
        scalars = {k: v.detach().clone() for k, v in flat_states[0].items() if k not in keys}  # step
        params = dict(model.named_parameters())
        for group in groups:
            for name in group["params"]:
                values = {k: safe_get_full_optimizer_state(params[name], k).cpu() for k in keys}
                if is_main:
                    state[name] = {**{k: v.clone() for k, v in scalars.items()}, **values}
    return {"state": state, "param_groups": groups} if is_main else {}


def _deepspeed_load_optimizer_state(model, optimizer, saved: dict) -> None:
    """Restore a by-name optimizer state onto ZeRO's flat fp32 partitions, before the first step: every
    partition gets its state (zeros, and the step count), then each parameter's slice is copied in."""
    from deepspeed.utils import safe_set_full_optimizer_state

    zero, base = _ds_inner(optimizer)
    if not saved["state"]:
        return
    first = next(iter(saved["state"].values()))
    keys = [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]
    scalars = {k: v for k, v in first.items() if k not in keys}
    for flat in _ds_flat(zero):  # (the groups' hyperparameters were restored before `prepare`)
        base.state[flat] = {**{k: torch.as_tensor(v).clone() for k, v in scalars.items()},
                            **{k: torch.zeros_like(flat) for k in keys}}
    _ds_link_states(zero)
    params = dict(model.named_parameters())
    for name in [n for group in _ds_param_groups(model, zero, base) for n in group["params"]]:
        for key in keys:
            safe_set_full_optimizer_state(params[name], saved["state"][name][key].to(torch.float32), key)


def _wrap_blocks_present(plugin, model) -> None:
    """Shard per transformer block: the model's `_no_split_modules` classes that it contains. Accelerate takes them
    all and fails on a class the model lacks (SigLIP's lists its text embeddings and attention-pooling head, which a
    VLM's vision tower does not have)."""
    if plugin.transformer_cls_names_to_wrap is not None:  # fsdp_transformer_layer_cls_to_wrap in the config
        return
    present = {type(m).__name__ for m in model.modules()}
    plugin.transformer_cls_names_to_wrap = [c for c in getattr(model, "_no_split_modules", None) or [] if c in present]


QUIET_LAUNCHER = """
import logging, runpy, sys
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
import torch.distributed.launcher.api  # the elastic agent's modules: their loggers, several with a level of their own
for name in list(logging.root.manager.loggerDict):
    if name.startswith("torch.distributed.elastic"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except ChildFailedError:
    sys.exit(1)
except SignalException as e:
    sys.exit(128 + e.sigval)
"""
"""Runs a launcher module (torchrun, `accelerate launch`) as `python -m` would, without the traceback and the log
lines with which torchrun reports a process that failed (the process said why itself) or its own interruption
(Ctrl-C: the processes say they were interrupted)."""


def launch(nproc: int, argv: list[str], accelerate_config: str | None = None) -> list[str]:
    """Run `verbovision ARGV` in `nproc` processes: torchrun, or `accelerate launch` with a config file. Returns []
    when they all finished, else the errors they stopped with, each once (every process meets the same bad input),
    or a line that says they failed where none stopped with one (a crash, which printed its own traceback)."""
    if accelerate_config:
        # A port of its own unless the config sets one (several machines): concurrent runs on one machine would
        # otherwise all meet on Accelerate's default port and wait for each other forever.
        port = [] if "main_process_port" in yaml.safe_load(Path(accelerate_config).read_text()) else \
            ["--main_process_port", str(_free_port())]
        command = ["accelerate.commands.launch", "--config_file", accelerate_config,
                   "--num_processes", str(nproc), *port, "-m", "verbovision", *argv]
    else:
        command = ["torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "verbovision", *argv]
    with tempfile.TemporaryDirectory(prefix="verbo-errors-") as errors:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), RANK_ERRORS: errors}
        status = subprocess.run([sys.executable, "-c", QUIET_LAUNCHER, *command], env=env).returncode
        messages = [path.read_text(encoding="utf-8") for path in sorted(Path(errors).iterdir())]
    if not status:
        return []
    return list(dict.fromkeys(messages)) or [f"training in {nproc} processes failed (see their output above)"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
