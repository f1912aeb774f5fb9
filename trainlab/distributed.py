"""Training on many processes and machines: the one training loop under torch.distributed, launched by torchrun.

    torchrun --nproc_per_node 8 -m trainlab train RECIPE                       # 8 GPUs on one machine
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 --rdzv-id RUN -m trainlab train RECIPE   # 32 GPUs on 4 machines

Every process runs loop.train; a `Dist` holds what differs between them:

  - `setup` joins the process group (NCCL on GPUs, gloo on CPUs) and picks the process's device;
  - `plan` splits the recipe's global batch (data.batch_size x loop.grad_accum) over processes and micro-steps;
  - `wrap` puts the model under DistributedDataParallel, or shards it with FSDP2 (`loop.parallel = "fsdp"`);
  - `accumulate` skips the gradient all-reduce on every micro-step but the last of an optimizer step;
  - `mean`, `any`, `broadcast` give every rank the same metrics and decisions (NaN, early stopping);
  - `main_only` hands rank 0 the real run-folder writers and the other ranks a `Null` that ignores every call;
  - checkpoints: DDP weights are whole on every rank and rank 0 writes them as a single process would; FSDP
    shards are written and read by every rank with torch.distributed.checkpoint, which reshards on load, so a
    run resumes with any number of processes.

Without torchrun, `setup` returns a Dist of one process whose collectives do nothing.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from trainlab import checkpoint, files
from trainlab.config import LoopConfig
from trainlab.errors import UserError, first_line
from trainlab.objectives import LossModule, Objective


class Null:
    """Stands in for rank 0's writers on the other ranks: every attribute is a method that does nothing."""

    def __getattr__(self, name: str) -> "Null":
        return self

    def __call__(self, *args, **kwargs) -> "Null":
        return self


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is shared: this process takes examples lo..hi-1 of the step's
    `batches` global batches, in `accum` micro-batches of `micro` examples."""

    global_batch: int
    batches: int  # global batches per optimizer step (loop.grad_accum)
    lo: int
    hi: int
    accum: int  # micro-steps in this process
    micro: int  # examples per micro-step


def plan(batch_size: int, grad_accum: int, world: int, rank: int) -> BatchPlan:
    """Rank `rank`'s share of each optimizer step. Micro-batches never exceed data.batch_size (the memory bound
    the recipe chose) and are as few as possible: on 8 GPUs, batch 16 x accum 8 becomes 16 x 1 per process."""
    g = batch_size * grad_accum
    if g % world:
        raise UserError(f"the global batch of {g} examples (data.batch_size {batch_size} x loop.grad_accum "
                        f"{grad_accum}) does not split evenly over {world} processes",
                        f"make data.batch_size x loop.grad_accum a multiple of {world}, or launch a number of "
                        f"processes that divides {g}")
    share = g // world
    accum = next(d for d in range(1, share + 1) if share % d == 0 and share // d <= batch_size)
    return BatchPlan(g, grad_accum, rank * share, (rank + 1) * share, accum, share // accum)


def pick_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available() and world == 1:
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"loop.device = '{name}' but CUDA is not available here", "use loop.device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("loop.device = 'mps' but MPS is not available here", "use loop.device=auto or cpu")
    if world > 1 and name == "mps":
        raise UserError("loop.device = 'mps' cannot train with several processes (no MPS backend in "
                        "torch.distributed)", "use loop.device=cpu, or run one process without torchrun")
    if world > 1 and name.startswith("cuda"):
        if name != "cuda":
            raise UserError(f"loop.device = '{name}' names one GPU, but under torchrun each process uses the GPU "
                            "of its local rank", "use loop.device=auto or cuda (and CUDA_VISIBLE_DEVICES to choose)")
        # Every process of a machine sees the same counts, so all of them stop with the same error.
        per_machine, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
        if per_machine > gpus:
            raise UserError(f"torchrun started {per_machine} processes on a machine with {gpus} GPUs",
                            f"use torchrun --nproc_per_node {gpus}")
        name = f"cuda:{local_rank}"  # torchrun's LOCAL_RANK picks this process's GPU
    return torch.device(name)


class Dist:
    def __init__(self, loop: LoopConfig, rank: int = 0, world: int = 1, local_rank: int = 0,
                 device: torch.device | None = None):
        self.rank, self.world, self.local_rank, self.parallel = rank, world, local_rank, loop.parallel
        self.device = device or pick_device(loop.device, local_rank, world)
        # NCCL moves CUDA tensors only; gloo moves CPU tensors.
        self.comm_device = self.device if world > 1 and dist.get_backend() == "nccl" else torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------------------ who writes

    def main_only(self, factory: Callable, *args, **kwargs):
        """factory(*args) on rank 0, a Null on the other ranks: the single place that decides who writes."""
        return factory(*args, **kwargs) if self.main else Null()

    def print(self, *args) -> None:
        if self.main:
            print(*args, flush=True)

    def local_first(self, fn: Callable):
        """fn() in the first process of each machine, then in the others (which find its caches). The wait
        may be long (tokenizing a big corpus), so it uses a gloo group without loop.dist_timeout_s."""
        if self.world == 1:
            return fn()
        patient = dist.new_group(backend="gloo", timeout=timedelta(days=1))  # freed with the default group
        if self.local_rank == 0:
            out = fn()
            dist.barrier(group=patient)
        else:
            dist.barrier(group=patient)
            out = fn()
        return out

    # ------------------------------------------------------------------------------------------ agreement

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (every rank contributes the same number of examples)."""
        return dict(zip(values, (v / self.world for v in self.sum(list(values.values())))))

    def mean_tensor(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a 1-D tensor of values, staying on the device (no wait for the host with NCCL)."""
        if self.world == 1:
            return values
        t = values.to(self.comm_device, torch.float64)
        dist.all_reduce(t)
        return (t / self.world).to(values.device, values.dtype)

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0 if self.world > 1 else flag

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    # ------------------------------------------------------------------------------------------ the work

    def plan(self, batch_size: int, grad_accum: int) -> BatchPlan:
        return plan(batch_size, grad_accum, self.world, self.rank)

    def describe(self, plan: BatchPlan, unit: str) -> str:
        return (f"batch {plan.global_batch} {unit} = {self.world} process{'es' if self.world > 1 else ''} x "
                f"{plan.accum} micro-step{'s' if plan.accum > 1 else ''} x {plan.micro}"
                + (f" ({self.parallel.upper()}, {dist.get_backend()})" if self.world > 1 else ""))

    def seed(self, seed: int) -> None:
        """After the model is built (the same on every rank): a different random stream per rank, for dropout."""
        if self.rank:
            torch.manual_seed(seed + 1_000_003 * self.rank)

    def wrap(self, model: nn.Module, objective: Objective, compile: bool) -> nn.Module:
        """The module the loop calls: batch -> (loss, metrics). `model` stays the module that is saved."""
        fsdp = self.world > 1 and self.sharded
        if fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            for block in _blocks(model):  # one all-gather per Transformer block, freed after its forward
                fully_shard(block, mesh=mesh)
        step = LossModule(torch.compile(model) if compile else model, objective)
        if fsdp:
            fully_shard(step, mesh=mesh)  # embeddings, head and anything outside the blocks
        elif self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            step = DistributedDataParallel(step, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return step

    def accumulate(self, step: nn.Module, sync: bool):
        """Around a micro-step's forward and backward: gradients are averaged across ranks only when `sync`."""
        if self.world == 1:
            return nullcontext()
        if self.sharded:
            step.set_requires_gradient_sync(sync)
            return nullcontext()
        return nullcontext() if sync else step.no_sync()

    def grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip to the global norm; return the norm before clipping (a 0-dim tensor on the device)."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor

    # ------------------------------------------------------------------------------------------ checkpoints

    @property
    def sharded(self) -> bool:
        return self.parallel == "fsdp"

    def save_checkpoint(self, root: Path, step: int, model: nn.Module, optimizer, state: dict,
                        links: tuple[str, ...]) -> None:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import get_state_dict

            tmp = root / f".tmp-{step:07d}-sharded"
            if self.main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self.barrier()
            model_sd, optim_sd = get_state_dict(model, optimizer)
            _dcp("save", {"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp / checkpoint.SHARDS,
                 no_dist=self.world == 1)
            if self.main:  # dcp.save returns once every rank's shard and the metadata are written
                torch.save(state, tmp / checkpoint.STATE)
                checkpoint.commit(root, tmp, step, links)
        elif self.main:
            checkpoint.save(root, step, model, {**state, "optimizer": optimizer.state_dict()}, links)
        self.barrier()  # nobody reads last/best before they point at this checkpoint

    def load_checkpoint(self, path: Path, model: nn.Module, optimizer=None) -> dict:
        """Weights (and the optimizer's state when given) into this rank's model; returns the loop state."""
        if not self.sharded:
            state = checkpoint.load(path, model, need_optimizer=optimizer is not None, loop_state=True)
            if optimizer is not None:
                files.load_optimizer(optimizer, state["optimizer"], path / checkpoint.STATE)
            return state
        from torch.distributed.checkpoint import state_dict as sd
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        state = checkpoint.load_state(path, need=checkpoint.SHARDS, loop_state=True)
        want = {"model": sd.get_model_state_dict(model)}
        if optimizer is not None:
            want["optimizer"] = sd.get_optimizer_state_dict(model, optimizer)  # the layout to read into
        try:
            _dcp("load", want, checkpoint_id=path / checkpoint.SHARDS, no_dist=self.world == 1)
        except (Exception, CheckpointException) as e:  # damaged shards, or a model that does not fit them
            raise UserError(f"sharded checkpoint {path.resolve()} is corrupt or does not fit the model "
                            f"({first_line(e)})",
                            "delete the run folder to start over, or resume a run with an intact checkpoint") from None
        sd.set_model_state_dict(model, want["model"])
        if optimizer is not None:
            sd.set_optimizer_state_dict(model, optimizer, want["optimizer"])
        return state

    def rank_states(self, key: str, local) -> dict:
        """State that differs between ranks (random generators, an environment source's environments and
        buffers) for the checkpoint: rank 0's under `key`, every rank's under `key_ranks` (a collective: every
        rank calls it), for an exact resume with the same number of processes."""
        return {key: local} | ({f"{key}_ranks": self.gather(local)} if self.world > 1 else {})

    def own_state(self, state: dict, key: str):
        """This rank's entry of rank_states; None when the checkpoint has another number of processes."""
        ranks = state.get(f"{key}_ranks") or [state[key]]
        return ranks[self.rank] if len(ranks) == self.world else None

    def pick_rng(self, state: dict, seed: int, step: int) -> dict | None:
        own = self.own_state(state, "rng")
        if own is None and self.main:
            return state["rng"]
        if own is None:  # another world size: a fresh stream per rank
            torch.manual_seed(seed + 1_000_003 * self.rank + step)
        return own

    def full_model(self, model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
        """The whole model on rank 0 (FSDP gathers its shards; every rank must call this), None elsewhere."""
        if not (self.sharded and self.world > 1):
            return model if self.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.main:
            return None
        plain = build()
        plain.load_state_dict(full)
        return plain


def _dcp(op: str, *args, **kwargs):
    """torch.distributed.checkpoint's save or load, quiet about working in one process (which is meant)."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return getattr(dcp, op)(*args, **kwargs)


def _blocks(module: nn.Module):
    """The modules of the first ModuleLists under `module` (a GPT's blocks), not their insides (MoE experts)."""
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            yield from child
        else:
            yield from _blocks(child)


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def peer_failure(e: RuntimeError) -> bool:
    """Whether `e` is torch.distributed reporting a lost peer or a timed-out collective."""
    return isinstance(e, dist.DistError) or any(
        s in str(e) for s in ("Connection closed by peer", "Connection reset by peer", "timed out", "Timeout"))


def record_error(text: str) -> None:
    """Leave an error where torchrun's failure summary shows it (TORCHELASTIC_ERROR_FILE)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        message = {"message": text, "extraInfo": {"py_callstack": text, "timestamp": str(int(time.time()))}}
        Path(path).write_text(json.dumps({"message": message}))


@contextmanager
def session(loop: LoopConfig):
    """The Dist of this process: joins torchrun's process group when launched by torchrun. The group stays for
    the life of the process (left at exit): a second run in the same process (a scaling sweep, a script that
    trains twice) finds it, where a group destroyed and created again would wait for a rendezvous forever."""
    if not launched():
        yield Dist(loop)
        return
    world, r, local = int(os.environ["WORLD_SIZE"]), rank(), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(loop.device, local, world)  # also checks that the machine has a GPU per process
    if not dist.is_initialized():
        backend = loop.backend if loop.backend != "auto" else "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and not (device.type == "cuda" and dist.is_nccl_available()):
            raise UserError("loop.backend = 'nccl' needs CUDA GPUs and a CUDA build of PyTorch; this process has "
                            "neither", "use loop.backend=auto (gloo on CPUs)")
        if not dist.is_available() or (backend == "gloo" and not dist.is_gloo_available()):
            raise UserError(f"this PyTorch build has no '{backend}' backend for torch.distributed",
                            "install a PyTorch build with distributed support, or run one process")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timedelta(seconds=loop.dist_timeout_s))
        atexit.register(_leave_group)
    try:
        yield Dist(loop, r, world, local, device)
    except BaseException:
        _exit_state["failed"] = True
        raise


_exit_state = {"failed": False}


def _leave_group() -> None:
    """At exit, the processes leave together: gloo aborts a process whose peer closes its connections while it
    still holds the group (seen once in CI, a two-process FSDP test), so on a clean exit they meet at a barrier
    first. After a failure there is no barrier: the peers may be blocked in another collective, and torchrun
    stops them once this process exits."""
    if not dist.is_initialized():
        return
    if not _exit_state["failed"] and dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        except Exception:  # a peer is gone or stuck: the OS closes the connections
            return
    dist.destroy_process_group()
