"""Joining Ray, and keeping the trainer's resources away from the rollout and reward actors.

`connect()` starts a local Ray instance, or joins a running cluster when `RAY_ADDRESS` is set (`nativerl train
RECIPE --ray-address auto` sets it after `ray start --head`). Joining a cluster takes its resources as they are, so
the local-instance settings (CPUs, object store size, dashboard) only apply when this process starts Ray itself.

A local instance ends with this process: `connect()` makes the driver a child subreaper (Linux), so Ray processes
orphaned by a crash of their parent (a killed GCS or raylet leaves its dashboard and runtime-env agents and idle
workers behind) are re-parented to the driver instead of init, and at exit (`atexit`: normal end, an exception,
`SystemExit` from a second signal) `ray.shutdown()` runs and every Ray process still below the driver is killed.

`reserve_trainer(num_cpus, num_gpus)` puts the trainer on its own placement group: the bundle's CPUs and GPUs are
taken out of the pool that rollout and reward actors are scheduled from, so on a GPU node an actor can never be
placed on the trainer's GPU. With GPUs a small holder actor is started inside the bundle so that Ray assigns (and
keeps) concrete GPU ids; the trainer process then uses `reservation.gpu_ids` (docs/MULTI_NODE.md).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import ray

# Forwarded to the workers of a cluster this process joins (a local instance's workers inherit the environment).
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM",
                  "HF_HOME")


def connect(*, num_cpus: int | None = None, num_gpus: int | None = None, object_store_memory: int | None = None,
            include_dashboard: bool = False, log_to_driver: bool = True) -> dict[str, Any]:
    """ray.init once per process (no-op if already initialised). Returns the cluster's resources."""
    if ray.is_initialized():
        return ray.cluster_resources()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # silences the token-auth notice of local instances
    address = os.environ.get("RAY_ADDRESS")
    if address:
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        ray.init(address=address, log_to_driver=log_to_driver,
                 runtime_env={"env_vars": env} if env else None)
    else:
        # address="local": always a fresh instance, even if a stale /tmp/ray/ray_current_cluster file from an
        # earlier `ray start` is lying around (without it ray.init would try to join that dead cluster).
        _become_subreaper()
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory,
                 include_dashboard=include_dashboard, log_to_driver=log_to_driver)
        # Ray's excepthook (installed when ray is imported) reports an uncaught exception to the GCS first; with the
        # GCS dead it blocks until Ray aborts the process, and the cleanup below would never run.
        from ray._private import worker as ray_worker

        if sys.excepthook is getattr(ray_worker, "custom_excepthook", None):
            sys.excepthook = ray_worker.normal_excepthook
        atexit.register(stop_local_instance)
    return ray.cluster_resources()


def _become_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented to this process, not to init."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # 36 = PR_SET_CHILD_SUBREAPER


def ray_descendants() -> list[Any]:
    """psutil processes below this one that belong to Ray (gcs_server, raylet, agents, workers, monitors)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            text = proc.name() + " " + " ".join(proc.cmdline())
            if "ray" in text:
                found.append(proc)
    return found


def stop_local_instance() -> None:
    """ray.shutdown(), then kill the Ray processes left below this process and reap them. With the GCS dead,
    ray.shutdown would wait for it (about a minute, then Ray aborts the process, skipping the rest of atexit), so
    the leftovers are killed without it."""
    import psutil

    def gcs_alive() -> bool:
        for proc in ray_descendants():
            with contextlib.suppress(psutil.Error):
                if proc.name() == "gcs_server" and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
        return False

    alive_gcs = gcs_alive()
    if alive_gcs:
        ray.shutdown()
    else:
        atexit.unregister(ray.shutdown)
    left = ray_descendants()
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    if not alive_gcs:
        # Ray's half-connected core worker crashes the interpreter's finalisation (SIGSEGV) once its GCS is gone:
        # end here, with a failure code and a message, instead.
        print("nativerl: Ray's GCS died during the run; its processes were stopped", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


@ray.remote(num_cpus=0)
class _GpuHolder:
    """Sits in the trainer's bundle so that Ray assigns the bundle's GPU ids and never hands them out again."""

    def gpu_ids(self) -> list[int]:
        return [int(i) for i in ray.get_gpu_ids()]


@dataclass
class TrainerReservation:
    placement_group: Any
    num_cpus: float
    num_gpus: float
    gpu_ids: list[int] = field(default_factory=list)
    holder: Any = None

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group

        if self.holder is not None:
            ray.kill(self.holder)
            self.holder = None
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None


def reserve_trainer(num_cpus: float = 1.0, num_gpus: float = 0.0, timeout_s: float = 60.0) -> TrainerReservation:
    """A placement group holding the trainer's CPUs/GPUs (one bundle: STRICT_PACK keeps it on one node)."""
    from ray.util.placement_group import placement_group

    if num_cpus <= 0 and num_gpus <= 0:
        raise ValueError("reserve_trainer needs num_cpus > 0 or num_gpus > 0")
    bundle = {k: v for k, v in (("CPU", num_cpus), ("GPU", num_gpus)) if v > 0}
    pg = placement_group([bundle], strategy="STRICT_PACK", name="nativerl-trainer")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
        raise RuntimeError(f"could not reserve {bundle} for the trainer within {timeout_s} s; cluster has "
                           f"{ray.available_resources()} available")
    reservation = TrainerReservation(placement_group=pg, num_cpus=num_cpus, num_gpus=num_gpus)
    if num_gpus > 0:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        holder = _GpuHolder.options(
            num_gpus=num_gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=0),
        ).remote()
        reservation.holder = holder
        reservation.gpu_ids = ray.get(holder.gpu_ids.remote(), timeout=timeout_s)
    return reservation
