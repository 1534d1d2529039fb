"""How a multi-process run ends: every rank leaves the process group so that a finished run exits 0.

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
import weakref

import torch.distributed as dist

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
    _forget_groups_in_device_meshes()
    gc.collect()  # the group's last reference: its destructor drains the queue and joins the worker threads


def _forget_groups_in_device_meshes() -> None:
    # FSDP2 and DTensor (torch 2.14) keep each DeviceMesh in module-level caches (DTensorSpec, redistribute plans)
    # for the life of the process, and a mesh holds its process groups in `_pg_registry`: the destroyed group would
    # outlive the script and its threads would meet interpreter shutdown. A mesh is unusable once its group is gone.
    from torch.distributed.device_mesh import DeviceMesh

    for mesh in (obj for obj in gc.get_objects() if isinstance(obj, DeviceMesh)):
        getattr(mesh, "_pg_registry", {}).clear()
