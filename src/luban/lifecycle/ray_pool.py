"""Ray actors for luban's batch jobs: `luban predict --backend ray`, `luban embed --backend ray` and
`luban kb build / add --backend ray` share this one pool.

Each actor builds its worker once (`make(*args)`: a module-level function, so that it pickles by name, returning a
callable such as a loaded predictor or encoder) with its share of the torch threads, then maps items (data frames,
lists of texts) through it. `ordered` sends the items round-robin and yields the results in input order, with at
most `depth` items in flight: the driver holds a bounded number of batches whatever the size of the input.

Plain actors rather than Ray Data's `map_batches`: the driver already reads its input in chunks with luban's own
readers (or holds the chunk texts), the order is the order of a FIFO of object refs (no `preserve_order` switch,
no materialized dataset in the object store), the memory bound is a count of batches, and the driver's own
progress bar (luban.training.progress) advances as each batch returns.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from contextlib import contextmanager

from luban.errors import ConfigError, LubanError

INSTALL = "pip install 'luban[distributed]'"


def ray_missing() -> bool:
    """Whether ray cannot be imported (cheap: nothing is imported)."""
    try:
        return importlib.util.find_spec("ray") is None
    except ValueError:  # sys.modules["ray"] is a module without a spec
        return False


def require_ray(option: str = "--backend ray") -> None:
    """ConfigError naming `option` when ray is not installed."""
    if ray_missing():
        raise ConfigError(f"{option} needs ray, which is not installed: {INSTALL}")


def check_workers(workers, option: str = "--workers") -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{option} {workers!r}: must be a whole number of at least 1")
    return workers


def check_backend(backend: str, workers, address: str = "local", option: str = "--backend") -> None:
    """The options of a job that may run on Ray, checked before anything heavy loads or is written."""
    if backend not in ("local", "ray"):
        raise ConfigError(f"{option} {backend!r}: choose local or ray")
    check_workers(workers, "--workers")
    if backend == "ray":
        require_ray(f"{option} ray")
        _reachable(address)


def start(address: str = "local", option: str = "--backend ray"):
    """ray, initialized once per process: `local` starts a local Ray, else `address` (ray://host:10001, auto)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"{option} needs ray: {INSTALL}") from None
    if not ray.is_initialized():
        _reachable(address)
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as e:
            raise ConfigError(f"--address {address}: no Ray cluster to join ({e})") from None
    return ray


def _reachable(address: str) -> None:
    """A HOST:PORT or ray://HOST:PORT address answers, checked in seconds (Ray itself retries for minutes)."""
    import socket

    if address in ("local", "auto"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({e})") from None


def cpu_share(ray, workers: int) -> float:
    """CPUs each actor asks for: the cluster's CPUs less one for the driver, split evenly, at most one node's worth
    (Ray takes fractions below 1 and whole numbers above)."""
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_node = max([float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [cpus])
    raw = min((cpus - 1) / workers if cpus > 1 else 0.5, per_node)
    return float(int(raw)) if raw >= 1 else max(0.25, raw)


class _Worker:
    def __init__(self, threads: int, make, args: tuple):
        from luban.training.hardware import set_threads

        set_threads(threads)  # the actor's share of the cores, not all of them (a run's loader keeps it)
        self.error = None
        try:
            self.fn = make(*args)
        except LubanError as e:  # said where the first item is mapped, as the local path would say it
            self.error = e

    def map(self, item):
        if self.error is not None:
            raise self.error
        return self.fn(item)


@contextmanager
def actor_pool(make, args: tuple, workers: int, address: str = "local"):
    """`workers` actors, each holding `make(*args)`; killed on the way out."""
    ray = start(address)
    share = cpu_share(ray, workers)
    Worker = ray.remote(num_cpus=share)(_Worker)
    actors = [Worker.remote(max(1, int(share)), make, args) for _ in range(workers)]
    try:
        yield actors
    finally:
        for a in actors:
            ray.kill(a)


def ordered(actors, items, depth: int):
    """(item, result) in input order, with at most `depth` items in flight (memory stays bounded). A luban error
    raised in an actor is raised here as itself."""
    import ray

    def get(ref):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, LubanError):
                raise e.cause from None
            raise

    pending: deque = deque()
    try:
        for i, item in enumerate(items):
            pending.append((item, actors[i % len(actors)].map.remote(item)))
            if len(pending) >= depth:
                item, ref = pending.popleft()
                yield item, get(ref)
        while pending:
            item, ref = pending.popleft()
            yield item, get(ref)
    except BaseException:  # stop the actors and collect what is in flight: no "unhandled error" logs after ours
        for a in actors:
            ray.kill(a)
        for _, ref in pending:
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - the first error is the one raised
                pass
        raise
