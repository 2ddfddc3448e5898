"""The GPU check: full-size Karlo and Kandinsky 2.2 in dalle next to diffusers' pipelines on one CUDA GPU.

Run it on the H200 device machine. Once, here, in the repo root, fetch the wheels the machine lacks (it has torch,
safetensors, huggingface_hub 1.33 and an older transformers, but no diffusers; regex comes along because
transformers 5.24 checks for regex >= 2025.10.22 at import and the machine's version is not known):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        diffusers==0.42.1 transformers==5.24.0 tokenizers==0.23.3 regex==2026.11.19

then call the device tool's `run` with carry [".whl"], timeout_s 480, and this command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1; set -o pipefail; python3 benchmarks/gpu_check.py --device cuda --out $OUT --work /tmp/gpu-check 2>&1 | tee $OUT/log.txt

On the CPU first, at the tests' toy widths (tests/test_gpu_check.py runs exactly this):

    python benchmarks/gpu_check.py --small --device cpu --out DIR

What it does, per model section (SECTIONS; the sections are in benchmarks/gpu_sections.py):
1. builds the model with random weights from the real configs and saves it once in the hub layout under --work
   (benchmarks/karlo_random.py, benchmarks/kandinsky_random.py: fp16, damped output convolutions, sample-predicting
   decoder schedulers; Kandinsky 2.2 as a prior folder and a decoder folder); everything after that loads it through
   `dalle_cli.load`, as a user's folders, offline;
2. times dalle's text-to-image at the model's default settings for 4 images: Karlo at 25/25/7 steps, guidance 4/8,
   in fp16 at batch 1 and 4, fp16 with low-VRAM at batch 1 and 4, bf16 at batch 4; Kandinsky 2.2 at 512×512, 25/100
   steps, guidance 4/4, in fp16 at batch 1 and 4, fp16 with low-VRAM at batch 4 (each low-VRAM call moves all the
   weights, and the full batch gives the largest activations) and, last, bf16 at batch 4. Load and sampling are
   measured separately (seconds, and the peak of torch.cuda.max_memory_allocated), each run after a 2-step warm-up,
   whose seconds and peak are kept too. Kandinsky's loads each start with a cold zero-image-embedding cache (a fresh
   $DALLE_CACHE under --work): the first warm-up loads the image encoder and computes the embedding, as a user's
   first run does, and its peak in low-VRAM mode is the image-encoder stage's;
3. runs the diffusers pipeline (UnCLIPPipeline, or KandinskyV22CombinedPipeline built from its components;
   benchmarks/karlo_reference.py, benchmarks/kandinsky_reference.py, each in its own process) on the same folders,
   seeds and steps in fp16 at batch 4, and compares its images with dalle's fp16 batch-4 images (max |Δ| in [0, 1]
   pixels);
4. counts the FLOPs of one image on meta copies of the networks (one step of each × its steps) and turns seconds
   per image into TFLOP/s and a fraction of the H200's measured dense bf16 rate (790 TFLOP/s);
5. prints one table and writes it to OUT/gpu_check.md, with every figure in OUT/gpu_check.json (rewritten after
   each row, so a run cut short still leaves what it measured).
With --small the models are the toy ones, 2 images at batch 1 and 2 (Kandinsky 2.2: 64×64, 3/3 steps; Karlo 3/3/2);
on the CPU everything runs in fp32 and the rows that need CUDA (fp16, bf16) are listed as skipped, with the reason.

Time on the H200, an ESTIMATE (not measured yet): start-up (wheels, imports, CUDA) 20-30 s; Karlo (unchanged: 3.4 B
parameters, 6.8 GB, 98 TFLOP an image) 80-140 s; Kandinsky 2.2 (4.9 B parameters, 9.8 GB, 182 TFLOP an image, 94 %
of it the UNet's 100 steps) 90-160 s: building and saving 15-25 s, the fp16 plan 12-17 s (batch 1 at 1-2 s an
image, bound by Python's launches; batch 4 near 0.5 s), low-VRAM 10-20 s (each call moves about 6 GB to the GPU and
back, the first also the 3.7 GB image encoder), the reference 25-40 s (imports, and without accelerate diffusers
initialises its UNet and prior on the CPU before loading them), bf16 8-10 s, the FLOP count 3 s. In all about 3-5.5
minutes, inside the 480 s limit with room to spare; the weights take 16.6 GB of disk under --work.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the device machine has the repo but no install of dalle_cli
    sys.path.insert(0, str(ROOT))

from gpu_sections import H200_DENSE_TFLOPS, Context, Section, kandinsky, karlo  # noqa: E402

# One entry per model family, each a function filling a Section with the same row and figure keys.
SECTIONS: dict[str, Callable[[Context, Section], None]] = {"karlo": karlo, "kandinsky": kandinsky}


def _gb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e9:.2f}"


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _figure_lines(section: dict[str, Any]) -> list[str]:
    """A section's figures besides the table, as far as it got: a run cut short lists what it measured."""
    f, lines = section["figures"], []
    if "settings" in f:
        s = f["settings"]
        steps = "/".join(str(v) for k, v in s.items() if k.endswith("_steps"))
        guidance = "/".join(str(v) for k, v in s.items() if k.endswith("_guidance"))
        lines.append(f"{section['model']}: steps {steps}, guidance {guidance}, images {f.get('image_shape', '?')}")
    if "flops_per_image" in f:
        by_net = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in f["flops_per_image_by_network"].items())
        lines += [f"- FLOPs per image (batch 1): {f['flops_per_image'] / 1e12:.4g} T ({by_net})",
                  (f"- max |Δ| dalle batch 1 vs batch {f['image_shape'][0]}: "
                   f"{f['max_abs_delta_batch_1_vs_batch_n']:.3g}; low-VRAM vs not: "
                   f"{f['max_abs_delta_low_vram_vs_normal']:.3g}; bf16 vs fp16: "
                   f"{_num(f['max_abs_delta_bf16_vs_fp16'], '.3g')}"),
                  (f"- low-VRAM sampling peak: {_gb(f['low_vram_peak_bytes'])} GB "
                   f"(goal ≤ {f['low_vram_goal_bytes'] / 1e9:.3g} GB)")]
    if "low_vram_stage_bytes" in f:
        stages = ", ".join(f"{k} {_gb(v)}" for k, v in f["low_vram_stage_bytes"].items())
        lines.append(f"- low-VRAM first-call peak (its warm-up loads the image encoder for the zero-image embedding): "
                     f"{_gb(f['low_vram_warmup_peak_bytes'])} GB; weights per stage (GB): {stages}; zero-embedding "
                     f"cache {f['zero_embed_cache']} (each plan's first warm-up computes it, the timed runs read it)")
    if "max_abs_delta_vs_diffusers" in f:
        lines.append(f"- max |Δ| dalle vs diffusers: {f['max_abs_delta_vs_diffusers']:.3g} (pixels in [0, 1]); "
                     f"pixels off the clip: dalle {f['informative_fraction_dalle']:.1%}, diffusers "
                     f"{f['informative_fraction_diffusers']:.1%}; non-finite pixels: dalle "
                     f"{f['nonfinite_pixels']['dalle']}, diffusers {f['nonfinite_pixels']['diffusers']}")
    if "weights" in f:
        w = f["weights"]
        lines.append(f"- weights: {w['parameters'] / 1e9:.3g} B parameters, {w['bytes'] / 1e9:.2f} GB, " + (
            "reused from an earlier run" if w["reused"] else
            f"built in {w['build_s']:.1f} s, saved in {w['save_s']:.1f} s"))
    if "error" in section:
        lines.append(f"- {section['model']} stopped: {section['error'].splitlines()[0]} (the log has the rest)")
    return lines


def table(report: dict[str, Any]) -> str:
    """The report as one markdown table (a row per configuration), then each section's other figures."""
    lines = [(f"GPU check on {report['device_name']} (torch {report['torch']}, {report['size']} model); "
              "GB = 10^9 bytes, peak = torch.cuda.max_memory_allocated"),
             "",
             ("| model | impl | dtype | low-VRAM | batch | load s | load peak GB | s/image | sampling peak GB | "
              "TFLOP/s | of 790 | status |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for section in report["sections"]:
        for r in section["rows"]:
            ok = r["status"] == "ok"
            fraction = r.get("fraction_of_h200_bf16")
            lines.append(
                f"| {section['model']} | {r['impl']} | {r['dtype']} | {'yes' if r['low_vram'] else 'no'} | "
                f"{r['batch']} | {_num(r.get('load_s'), '.1f')} | {_gb(r.get('load_peak_bytes'))} | "
                f"{_num(r.get('sample_s_per_image'), '.3f')} | {_gb(r.get('sample_peak_bytes'))} | "
                f"{_num(r.get('tflops'), '.3g')} | {'n/a' if fraction is None else f'{fraction:.1%}'} | "
                f"{'ok' if ok else 'skipped: ' + r['reason']} |")
    for section in report["sections"]:
        lines += ["", *_figure_lines(section)]
    lines += ["", f"wall time {report['wall_s']:.0f} s"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--small", action="store_true",
                        help="the tests' toy widths, 2 images, a few steps (Kandinsky 2.2 at 64×64)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dalle-gpu-check",
                        help="where the random weights and the reference's images go (not --out: they are large)")
    parser.add_argument("--models", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # Everything is local; on a machine without a network, a library asking the Hub would only wait for a timeout.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if args.small and device.type == "cpu":
        # Toy networks gain nothing from threads, and on a busy machine a thread pool that waits on its workers
        # made the toy run three times slower.
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": device.type, "size": "toy (--small)" if args.small else "full",
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "h200_dense_bf16_tflops": H200_DENSE_TFLOPS, "sections": [], "wall_s": 0.0}

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    def save() -> None:
        report["wall_s"] = time.perf_counter() - start
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "gpu_check.md").write_text(table(report))

    failed = False
    ctx = Context(device, args.small, args.work, log, save)
    for name in args.models:
        section = Section(name)
        report["sections"].append(section.__dict__)
        try:
            SECTIONS[name](ctx, section)
        except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others' figures
            failed = True
            section.__dict__["error"] = f"{type(e).__name__}: {e}"
            log(f"{name} failed: {section.__dict__['error']}")
        save()
    print(table(report), end="")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
