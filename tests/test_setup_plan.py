"""scripts/setup_env.sh picks its plan without downloading anything (NATIVERL_SETUP_DRY_RUN=1): a CUDA torch that is
already installed is kept, a local CPU wheel is used with the CPU-only rules, and on any other machine torch comes
from the package index."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def plan(tmp_path, find_links: Path, pythonpath: str = "") -> str:
    env = {**os.environ, "NATIVERL_SETUP_DRY_RUN": "1", "PIP_FIND_LINKS": str(find_links), "PYTHON": sys.executable,
           "PYTHONPATH": pythonpath}
    env.pop("NATIVERL_TORCH_INDEX_URL", None)
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    (line,) = [x for x in res.stdout.splitlines() if x.startswith("setup plan:")]
    return line


@pytest.fixture
def cpu_torch_only():
    import torch

    if torch.version.cuda:
        pytest.skip("this python has a CUDA torch: the gpu plan wins over the others")


def test_local_cpu_wheel(tmp_path, cpu_torch_only):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    line = plan(tmp_path, wheels)
    assert "mode=cpu" in line and "constraints-cpu.txt" in line and "local wheel" in line


def test_fresh_machine_takes_torch_from_the_index(tmp_path, cpu_torch_only):
    empty = tmp_path / "nothing"
    empty.mkdir()
    line = plan(tmp_path, empty)
    assert "mode=index" in line and "constraints-gpu.txt" in line and "package index" in line


def test_installed_cuda_torch_is_kept(tmp_path):
    fake = tmp_path / "fake" / "torch"  # what `import torch` finds first: a CUDA build, as far as the script asks
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("class version:\n    cuda = '12.8'\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    line = plan(tmp_path, wheels, pythonpath=str(tmp_path / "fake"))
    assert "mode=gpu" in line and "installed CUDA torch (kept)" in line
