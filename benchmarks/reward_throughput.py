"""Reward throughput on CPU: images per second, one batched call versus one image per call.

    .venv/bin/python benchmarks/reward_throughput.py [--size 512] [--n 8] [--n-large 3] [--json out.json]

Rewards: jpeg_compressibility; clipscore / aesthetic / pickscore on (a) tiny random CLIPs and (b) a random
CLIP with ViT-L/14 shapes (24-layer 1024-wide vision tower at 224², 12-layer 768-wide text tower, 768-d
projection; ~428 M parameters). The weights are RANDOM: no real CLIP ships offline here, so the numbers
measure compute, not quality. PickScore's real model is ViT-H/14 (~2x ViT-L's compute); here it runs on the
ViT-L/14 shape too. OCR (rapidocr, shipped PP-OCR weights) and GenEval (YOLOv3-tiny, shipped Darknet
weights, HSV colour) use real weights. `remote(jpeg)` is the JPEG reward through the HTTP server on
loopback (PNG encoding + JSON + HTTP included). Inputs: scikit-image photos resized to --size (OCR:
rendered signs).

Threads: torch runs with 1 thread (the machine's 2 cores are shared); rapidocr/onnxruntime and OpenCV use
their own defaults. Everything is built in a temporary directory and removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

torch.set_num_threads(1)

CLIP_SHAPES = {
    "tiny": dict(text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8),
                 projection_dim=768, image_size=32),
    "vit-l-14": dict(text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                               num_attention_heads=12),
                     vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, image_size=224, patch_size=14),
                     projection_dim=768, image_size=224),
}


def write_clip_tokenizer(out_dir: Path) -> None:
    """HF CLIPTokenizer files from the CLIP BPE merges that ship inside open_clip (no hub)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in lines]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tok_dir = out_dir / "bpe"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77).save_pretrained(str(out_dir))


def save_random_clip(out_dir: Path, shape: str) -> float:
    """A random HF CLIP + tokenizer + processor in the save_pretrained layout; returns build seconds."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    t0 = time.perf_counter()
    s = CLIP_SHAPES[shape]
    cfg = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                                      eos_token_id=49407, pad_token_id=49407, **s["text"]),
                     vision_config=s["vision"], projection_dim=s["projection_dim"])
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(str(out_dir))
    write_clip_tokenizer(out_dir)
    size = s["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor.save_pretrained(str(out_dir))
    return time.perf_counter() - t0


def save_random_aesthetic_head(path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64),
              "layers.7": (1, 16)}
    head = {}
    for prefix, (o, i) in shapes.items():
        head[f"{prefix}.weight"] = torch.randn(o, i, generator=g) / i ** 0.5
        head[f"{prefix}.bias"] = torch.zeros(o)
    torch.save(head, path)


def photos(n: int, size: int) -> list[np.ndarray]:
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return [np.asarray(Image.fromarray(sources[i % len(sources)]).convert("RGB").resize((size, size)))
            for i in range(n)]


def signs(n: int, size: int) -> tuple[list[np.ndarray], list[str]]:
    words = ["OPEN 24 HOURS", "Coffee Shop", "HELLO WORLD", "Step Goal"]
    try:
        font = ImageFont.load_default(size=size // 10)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    images, prompts = [], []
    for i in range(n):
        img = Image.new("RGB", (size, size), (235, 235, 220))
        ImageDraw.Draw(img).text((size // 10, size // 2 - size // 20), words[i % 4], fill=(10, 10, 10),
                                 font=font)
        images.append(np.asarray(img))
        prompts.append(f'a sign that says "{words[i % 4]}"')
    return images, prompts


def throughput(reward, images, prompts, metadata) -> dict[str, float]:
    reward(images[:1], prompts[:1], metadata[:1])  # warm-up (lazy init, allocator)
    n = len(images)
    t0, c0 = time.perf_counter(), time.process_time()
    out = reward(images, prompts, metadata)
    batched, batched_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        reward(images[i:i + 1], prompts[i:i + 1], metadata[i:i + 1])
    single, single_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(out.scores) == n and all(math.isfinite(s) for s in out.scores)
    # CPU seconds (all of this process's threads) are less sensitive than wall time to other jobs on the box.
    return {"n": n, "batched_ips": n / batched, "single_ips": n / single,
            "batched_cpu_ms": 1000 * batched_cpu / n, "single_cpu_ms": 1000 * single_cpu / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--n", type=int, default=8, help="images per measurement (cheap rewards)")
    ap.add_argument("--n-large", type=int, default=3, help="images per measurement (ViT-L/14-shaped models)")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    from rewards.registry import build_reward
    from rewards.server import BackgroundRewardServer, build_served_rewards
    from rewards.spec import RewardSpec

    rows: list[dict] = []

    def record(label: str, reward, images, prompts, metadata, note: str = "") -> None:
        r = throughput(reward, images, prompts, metadata)
        rows.append({"reward": label, "note": note, **r})
        print(f"| {label} | {r['n']} | {r['batched_ips']:.2f} | {r['single_ips']:.2f} | "
              f"{r['batched_cpu_ms']:.1f} | {r['single_cpu_ms']:.1f} | {note} |", flush=True)

    print("| reward | n | batched img/s | one-at-a-time img/s | batched CPU ms/img "
          "| one-at-a-time CPU ms/img | note |\n|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    imgs = photos(max(args.n, args.n_large), args.size)
    prompts = ["an astronaut", "a cat", "a cup of coffee", "a rocket"] * (len(imgs) // 4 + 1)
    meta = [{} for _ in imgs]
    n, nl = args.n, args.n_large

    record("jpeg_compressibility@flowgrpo", build_reward(RewardSpec(name="jpeg_compressibility")),
           imgs[:n], prompts[:n], meta[:n])
    with BackgroundRewardServer(build_served_rewards([{"name": "jpeg_compressibility"}])) as srv:
        remote = build_reward(RewardSpec(name="remote",
                                         options={"url": srv.url, "reward": "jpeg_compressibility"}))
        record("remote(jpeg_compressibility) over loopback", remote, imgs[:n], prompts[:n], meta[:n],
               "PNG+JSON+HTTP")
        remote.close()

    with tempfile.TemporaryDirectory(prefix="nativerl-bench-") as tmp:
        tmp = Path(tmp)
        head = tmp / "sac+logos+ava1-l14-linearMSE.pth"
        save_random_aesthetic_head(head)
        shapes = [("tiny", n)] + ([] if args.skip_large else [("vit-l-14", nl)])
        for shape, count in shapes:
            model_dir = tmp / shape
            build_s = save_random_clip(model_dir, shape)
            note = "random weights" + (f", built+saved in {build_s:.0f} s" if shape != "tiny" else "")
            specs = [("clipscore@flowgrpo", {"path": str(model_dir)}),
                     ("aesthetic", {"path": str(head), "clip_path": str(model_dir)}),
                     ("pickscore", {"path": str(model_dir)})]
            for name, options in specs:
                reward = build_reward(RewardSpec(name=name, options=options))
                label = f"{name} [{'tiny' if shape == 'tiny' else 'ViT-L/14-shaped'} CLIP]"
                record(label, reward, imgs[:count], prompts[:count], meta[:count], note)
                del reward
                gc.collect()

    try:
        from rewards.ocr import OCRReward

        sign_imgs, sign_prompts = signs(4, args.size)
        record("ocr@flowgrpo (rapidocr)", OCRReward(), sign_imgs, sign_prompts, [{} for _ in sign_imgs],
               "real PP-OCR weights")
    except Exception as exc:  # the OCR extra may be missing
        print(f"ocr: skipped ({type(exc).__name__}: {exc})")
    try:
        from rewards.geneval import GenEvalReward

        rows_meta = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "exclude": []}] * n
        record("geneval (yolov3tiny, hsv colour)", GenEvalReward(detector="yolov3tiny"), imgs[:n],
               prompts[:n], rows_meta, "real YOLOv3-tiny weights")
    except Exception as exc:
        print(f"geneval: skipped ({type(exc).__name__}: {exc})")

    total = time.perf_counter() - started
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmachine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} thread), images {args.size}x{args.size}; total {total:.0f} s; "
          f"1-min load average at the end {load:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "size": args.size, "total_s": total}, indent=1))


if __name__ == "__main__":
    main()
