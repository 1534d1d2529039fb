"""Running on several processes: FSDP on CPUs, how a run ends (every rank leaves the process
group so that a finished run exits 0), and a lost rank. Each workaround names the versions it works around
(torch 2.14, accelerate 1.15) and has a test that fails once it is no longer needed (tests/test_fsdp.py).

How a run ends.

Why a finished run could abort. gloo runs each collective on a worker thread of its own (torch 2.14:
`ProcessGroupGloo::runLoop`), and that thread drops its reference to the finished work object a moment *after* the
caller has been told it is done. `barrier()` also keeps the works still in progress alive until it completes, so the
all-gather that `Trainer` runs at the end of `train()` (its FLOP count) can outlive the barrier that follows it. When
the last reference to such a work goes, the tensors it holds are released, and a tensor that Python has already let
go of needs the GIL to free its Python object. If the main thread has reached interpreter shutdown by then, Python
ends the worker thread from inside that C++ destructor, which is `noexcept`: `terminate called without an active
exception`, SIGABRT, and the launcher kills the other rank (seen in about 1 run in 4 on a loaded 2-core machine;
core dump: `~AsyncAllgatherWork` <- `~AsyncBarrierWork` <- `runLoop`, in `take_gil` during `Py_FinalizeEx`).

`destroy_process_group()` alone does not stop those threads: it forgets the group, but DDP's reducer (and FSDP's
mesh) still hold it. The group's C++ destructor is what waits for its queue and joins its threads, and it runs with
the GIL released (torch binds process groups with a GIL-free destructor). So leaving properly is: wait for every
rank, drop the wrappers that hold the group, destroy it, and collect, all while the interpreter is still fully alive.
"""

import atexit
import gc
import logging
import os
import socket
import threading
import time
import weakref

import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)


def leave_process_group(trainer=None) -> None:
    """Ends this process's part of a multi-process run; call it on every rank once the run's work is done (the
    scripts do, after the card and the push). Returns at once when no process group is set up.

    Waits for every rank (so that no rank tears the group down while another still gathers or saves), releases the
    trainer's DDP/FSDP wrappers and the accelerator's references to them, destroys the group and collects it, which
    joins gloo's worker threads before the interpreter shuts down. The trainer's unwrapped `model` stays usable.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    _release_group(trainer)


def release_group_at_exit(trainer) -> None:
    """Registers the safety net, for scripts that never call `leave_process_group` and for a group that outlived it
    (an FSDP-sharded model holds the group for as long as the model lives; the caller's frames still held it). At
    interpreter exit, before shutdown begins, while other threads may still take the GIL: the trainer's wrappers are
    dropped, the group destroyed, and whatever became unreachable collected, the group's last holders with it. No
    barrier there: a rank that has finished must not wait for one that crashed."""
    trainer_ref = weakref.ref(trainer)

    def release():
        if dist.is_available() and dist.is_initialized():
            _release_group(trainer_ref())
        gc.collect()

    atexit.register(release)


def _release_group(trainer) -> None:
    if trainer is not None:
        trainer.model_wrapped = trainer.model  # the DDP wrapper (or FSDP's root) holds the group
        trainer.accelerator.free_memory()  # and the accelerator keeps the prepared model, optimizer and loaders
    gc.collect()  # the wrappers sit in reference cycles: free them before the group is destroyed
    dist.destroy_process_group()
    # FSDP2 and DTensor (torch 2.14) keep each DeviceMesh in module-level caches (DTensorSpec, redistribute plans)
    # for the life of the process, and a mesh holds its process groups in `_pg_registry`: the destroyed group would
    # outlive the script and its threads would meet interpreter shutdown. A mesh is unusable once its group is gone.
    from torch.distributed.device_mesh import DeviceMesh

    for mesh in (obj for obj in gc.get_objects() if isinstance(obj, DeviceMesh)):
        getattr(mesh, "_pg_registry", {}).clear()
    gc.collect()  # the group's last reference: its destructor drains the queue and joins the worker threads


# ---- a lost process: the survivors say which rank is gone and where to resume, instead of waiting on it ----

LOST_PROCESS_EXIT_STATUS = 1


class PeerWatch(TrainerCallback):
    """Watches the other ranks of a multi-process run from a background thread, so that a rank that dies alone (killed,
    out of memory, its machine gone) ends the run within seconds with a message that names it, instead of leaving the
    others blocked in a collective until its timeout (30 minutes by default).

    Each rank records its host and pid in the run's key-value store (the one the process group was set up with) and
    bumps a heartbeat counter every `interval` seconds. A peer on the same host is lost when its process no longer
    exists; any peer is lost when its heartbeat has not moved for `patience` seconds (measured on the watcher's own
    clock, so hosts need no common time), or when the store itself stops answering (it lives with rank 0 or the
    launcher). The watcher then logs which rank, and the newest complete checkpoint, and ends its process: the step
    under way cannot finish without the lost rank. Under `accelerate launch`/`torchrun` the launcher also stops the
    survivors (SIGTERM, then SIGKILL 30 s later); the message is what it does not give."""

    def __init__(self, output_dir: str, interval: float = 2.0, patience: float = 60.0):
        self.output_dir, self.interval, self.patience = output_dir, interval, patience
        self._stop = threading.Event()
        self._thread = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self._thread is not None or not (dist.is_available() and dist.is_initialized()):
            return
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        try:
            self.store = dist.distributed_c10d._get_default_store()
        except (RuntimeError, ValueError) as error:  # a group set up without a store: nothing to watch through
            logger.warning("Not watching the other ranks: %s", error)
            return
        self.store.set(f"hf_deit/peer/{self.rank}", f"{socket.gethostname()} {os.getpid()}")
        self._thread = threading.Thread(target=self._watch, name="hf_deit_peer_watch", daemon=True)
        self._thread.start()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        peers = [rank for rank in range(self.world_size) if rank != self.rank]
        seen = {rank: (None, time.monotonic()) for rank in peers}  # last heartbeat value, when it last moved
        beats = 0
        while not self._stop.wait(self.interval):
            try:
                beats += 1
                self.store.set(f"hf_deit/heartbeat/{self.rank}", str(beats))
                for rank in peers:
                    reason = self._lost_because(rank, seen)
                    if reason:
                        return self._end(rank, reason)
            except Exception as error:  # the store is gone with the process that held it
                if self._stop.is_set():
                    return
                return self._end(0, f"the run's key-value store stopped answering ({error})")

    def _lost_because(self, rank: int, seen: dict) -> str | None:
        host, pid = self.store.get(f"hf_deit/peer/{rank}").decode().split() \
            if self.store.check([f"hf_deit/peer/{rank}"]) else (None, None)  # fmt: skip
        if host == socket.gethostname() and not _process_exists(int(pid)):
            return f"its process (pid {pid} on this host) is gone"
        key = f"hf_deit/heartbeat/{rank}"
        beat = self.store.get(key) if self.store.check([key]) else None
        last, since = seen[rank]
        if beat != last:
            seen[rank] = (beat, time.monotonic())
        elif time.monotonic() - since > self.patience:
            return f"it has given no sign of life for {self.patience:.0f} s" + (f" (host {host}, pid {pid})" if host else "")
        return None

    def _end(self, rank: int, reason: str) -> None:
        checkpoint = get_last_checkpoint(self.output_dir) if os.path.isdir(self.output_dir) else None  # all whole
        resume = (f"The newest complete checkpoint is {checkpoint}: run the same command again to resume from it."
                  if checkpoint else "No checkpoint was saved yet: run the same command again to start over.")
        logger.error("Rank %d of this run was lost: %s. Rank %d stops too, since no step can finish without it. %s",
                     rank, reason, self.rank, resume)
        logging.shutdown()
        os._exit(LOST_PROCESS_EXIT_STATUS)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended: only its exit status is left for its parent
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# ---- FSDP on CPU processes ----


def shard_on_cpu_when_asked(trainer) -> None:
    """FSDP on several CPU processes, as asked, instead of accelerate's silent fall-back to DDP.

    accelerate 1.15 sets `DistributedType.FSDP` only for accelerator devices (`AcceleratorState.__init__`, the
    MULTI_GPU/NPU/XPU/... branch of accelerate/state.py): on CPU the state stays MULTI_CPU, the plugin is dropped and
    `Trainer` wraps the model in DDP, although `--fsdp` or `accelerate launch` with an FSDP config asked to shard.
    Its FSDP2 path itself (`fsdp2_prepare_model`: torch's `fully_shard` over the default gloo mesh) works on CPU, so
    the state gets what that branch would have given it: the plugin (the one the Trainer's arguments describe, or
    accelerate's environment from the launcher) and the type FSDP. Only FSDP2 (FSDP1, deprecated in transformers, is
    left as accelerate has it). Called at the end of the trainer's `__init__`, before anything is prepared; `Trainer`'s
    own checks of FSDP settings therefore do not run on CPU. Logs "FSDP2 on N CPU processes" when it acts: tests/test_fsdp.py expects that line, and fails
    once accelerate shards on CPU by itself.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    asked = trainer.args.fsdp_plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if not asked or state.distributed_type != DistributedType.MULTI_CPU or getattr(state, "fsdp_plugin", None):
        return
    plugin = FullyShardedDataParallelPlugin(**(trainer.args.fsdp_plugin_args or {}))
    if plugin.fsdp_version != 2:
        logger.warning("FSDP version 1 is not enabled on CPU here: training with DDP. fsdp_version 2 shards on CPU.")
        return
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    if trainer.args.place_model_on_device is None:
        trainer.place_model_on_device = False  # as Trainer decides for FSDP: `fully_shard` places the model
    logger.info("FSDP2 on %d CPU processes (gloo): accelerate enables FSDP only on accelerators.",
                state.num_processes)
