"""One Ray instance per test session (import the `ray_session` fixture from here in a Ray test module).

Settings from shared notes environment.md: 2 CPUs, a 200 MiB object store, no dashboard, worker logs not forwarded.
Starting Ray costs 3-5 s inside pytest, so it is started once, on first use, and shut down at the end.
"""

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)  # tests never join a running cluster
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
