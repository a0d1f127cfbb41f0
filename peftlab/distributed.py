"""Several processes on one recipe (`accelerate launch` / `torchrun`): data-parallel training, one writer.

Trainer (through accelerate) wraps the model in DistributedDataParallel and gives each process its share of every
batch; peftlab only has to keep the recipe's meaning and the run directory single:
- train.batch_size stays the global batch: each of N processes takes batch_size / N examples of it, so a step
  sees the same examples and the same averaged gradient as in one process; all steps when the training set
  divides by batch_size, else all but the last of each epoch (accelerate fills that short batch up with the
  epoch's first examples; speed.LengthBucketSampler states the rule);
- evaluation batches are split the same way and gathered back in dataset order, each example once
  (accelerate's gather_for_metrics drops the repeats it adds to even out the last batch);
- the main process alone creates and writes the run directory, the adapter and the reports.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PeftlabError, check

# launchers name the process count and rank differently: torchrun (accelerate launch) and the MPI flavours
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def world_size() -> int:
    from accelerate.utils import get_int_from_env

    return get_int_from_env(SIZE_VARS, 1)


def is_main() -> bool:
    from accelerate.utils import get_int_from_env

    return get_int_from_env(RANK_VARS, 0) == 0


def start() -> None:
    """Join the process group when launched with several processes (gloo on CPU, nccl on GPU): the same
    accelerate state that Trainer sets up later, created early so that the run directory can be shared first."""
    if world_size() > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def finish() -> None:
    """Leave the process group, on every way out of a run. PyTorch asks each process to destroy it before exit:
    left to interpreter shutdown, gloo's worker threads can outlive it and abort the process (SIGABRT,
    "terminate called without an active exception") after a run that succeeded."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def launch_command(argv: list[str]) -> list[str]:
    """The command a person typed to start this run: `python -m peftlab.run ARGS` in one process; with several,
    the launcher's (accelerate launch / torchrun), read from the parent process, which is the launcher, on Linux."""
    own = ["python", "-m", "peftlab.run", *argv]
    if world_size() == 1:
        return own
    try:  # /proc: no portable way to read another process's arguments without a new dependency (psutil)
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return own
    if not argv or parent[-len(argv):] != argv:  # not the launcher of this command (an MPI daemon, say)
        return own
    if Path(parent[0]).name.startswith("python"):  # `python -m accelerate...` or a console script run by python
        parent = ["python", *parent[1:]] if parent[1:2] == ["-m"] else [Path(parent[1]).name, *parent[2:]]
    else:
        parent = [Path(parent[0]).name, *parent[1:]]
    return parent


def share_from_main(make):
    """Run make() on the main process only and hand its result, or its error, to every process. Any error: the
    others wait in the broadcast until they get something (with nccl, until its timeout)."""
    if world_size() == 1:
        return make()
    import torch.distributed as dist

    box, failure = [None, None, None], None  # the result, a PeftlabError's message, any other error's
    if is_main():
        try:
            box[0] = make()
        except PeftlabError as err:
            failure, box[1] = err, str(err)
        except BaseException as err:  # KeyboardInterrupt too
            failure, box[2] = err, f"{type(err).__name__}: {err}"
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[1] is not None:
        raise PeftlabError(box[1])
    if box[2] is not None:
        raise RuntimeError(f"the main process failed: {box[2]}")
    return box[0]


def per_process(batch_size: int, what: str) -> int:
    n = world_size()
    check(batch_size % n == 0, f"train.{what}={batch_size} does not split over {n} processes; use a multiple of {n}")
    return batch_size // n


def gather(value) -> list:
    """value from every process, in rank order (a one-item list in one process)."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def any_process(flag: bool) -> bool:
    """flag, or-ed over all processes (one all-reduce per call; every process must call it)."""
    if world_size() == 1:
        return bool(flag)
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
