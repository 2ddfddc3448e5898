"""The GPU check: full-size Karlo in dalle next to diffusers' UnCLIPPipeline on one CUDA GPU.

Run it on the H200 device machine. Once, here, in the repo root, fetch the wheels the machine lacks (it has torch,
safetensors, huggingface_hub 1.33 and an older transformers, but no diffusers; regex comes along because
transformers 5.24 checks for regex >= 2025.10.22 at import and the machine's version is not known):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        diffusers==0.42.1 transformers==5.24.0 tokenizers==0.23.3 regex==2026.11.19

then call the device tool's `run` with carry [".whl"], timeout_s 480, and this command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1; set -o pipefail; python3 benchmarks/gpu_check.py --device cuda --out $OUT --work /tmp/karlo-random 2>&1 | tee $OUT/log.txt

On the CPU first, at the tests' toy widths (tests/test_gpu_check.py runs exactly this):

    python benchmarks/gpu_check.py --small --device cpu --out DIR

What it does, per model section (Karlo now; Kandinsky 2.2 becomes another entry of SECTIONS when it lands):
1. builds Karlo with random weights from the real configs (benchmarks/karlo_random.py: fp16, damped output
   convolutions, sample-predicting decoder and super-resolution schedulers) and saves it once in the hub layout
   under --work; everything after that loads it through `dalle_cli.load`, as a user's folder, offline;
2. times dalle's text-to-image at the model's default settings (Karlo's 25/25/7 steps, guidance 4/8) for 4 images:
   fp16 at batch 1 and 4, fp16 with low-VRAM at batch 1 and 4, bf16 at batch 4; load and sampling are measured
   separately (seconds, and the peak of torch.cuda.max_memory_allocated), each run after a 2-step warm-up;
3. runs diffusers' UnCLIPPipeline (benchmarks/karlo_reference.py, its own process) on the same folder, seeds and
   steps in fp16 at batch 4, and compares its images with dalle's fp16 batch-4 images (max |Δ| in [0, 1] pixels);
4. counts the FLOPs of one image on meta copies of the networks and turns seconds per image into TFLOP/s and a
   fraction of the H200's measured dense bf16 rate (790 TFLOP/s);
5. prints one table and writes it to OUT/gpu_check.md, with every figure in OUT/gpu_check.json (rewritten after
   each row, so a run cut short still leaves what it measured).
With --small the model is the toy one, 2 images at batch 1 and 2, 3/3/2 steps; on the CPU everything runs in fp32
and the rows that need CUDA (fp16, bf16) are listed as skipped, with the reason.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the device machine has the repo but no install of dalle_cli
    sys.path.insert(0, str(ROOT))

from bench_timing import allocated, measure, release  # noqa: E402
from karlo_random import Recipe, flops_per_image, save_random_karlo  # noqa: E402

import dalle_cli  # noqa: E402

H200_DENSE_TFLOPS = 790.0  # an 8192³ bf16 matmul on this workplace's H200s (device KINDS.md)
PROMPTS = ["an astronaut riding a horse on the moon", "a bowl of soup that is also a portal to another dimension",
           "a watercolour painting of a lighthouse at dawn", "a corgi wearing a tiny wizard hat"]
REFERENCE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Plan:
    """One load of the model and the batch sizes sampled with it. `skip` is the reason it cannot run here."""

    dtype: str
    low_vram: bool
    batches: tuple[int, ...]
    skip: str | None = None


@dataclass
class Section:
    """One model's part of the report: a row per measured (or skipped) configuration, and its other figures."""

    model: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every section is given: the device, the run's size, where to work and how to report progress."""

    device: torch.device
    small: bool
    work: Path
    log: Callable[[str], None]
    save: Callable[[], None]  # rewrite the outputs with what has been measured so far


def plans(device: torch.device, images: int) -> list[Plan]:
    """The loads the check measures: fp16 (batch 1 and all images at once), the same with low-VRAM, and bf16 at
    full batch. On the CPU the fp16 plans run in fp32, and the half-precision plans are listed as skipped."""
    if device.type == "cuda":
        return [Plan("fp16", False, (1, images)), Plan("fp16", True, (1, images)), Plan("bf16", False, (images,))]
    why = "needs CUDA: half precision on the CPU is slow and not what this check measures"
    return [Plan("fp32", False, (1, images)), Plan("fp32", True, (1, images)),
            Plan("fp16", False, (1, images), why), Plan("fp16", True, (1, images), why),
            Plan("bf16", False, (images,), why)]


def reference_pixels(images: torch.Tensor) -> torch.Tensor:
    """dalle's [-1, 1] NCHW images as diffusers' output_type="np" gives them: ×0.5 + 0.5 and the clamp in the
    model's dtype, as the reference does them, then float32 NHWC on the CPU."""
    return (images * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float()


def informative(pixels: torch.Tensor) -> float:
    """The fraction of pixel values off the clip (inside (0.01, 0.99)): saturated images would agree trivially."""
    return ((pixels > 0.01) & (pixels < 0.99)).float().mean().item()


def _rate(flops: float, seconds_per_image: float | None, device: torch.device) -> tuple[float | None, float | None]:
    """Achieved TFLOP/s and, on CUDA, its fraction of the H200's dense bf16 rate."""
    if not seconds_per_image:
        return None, None
    tflops = flops / seconds_per_image / 1e12
    return tflops, (tflops / H200_DENSE_TFLOPS if device.type == "cuda" else None)


def _run_reference(ctx: Context, folder: Path, dtype: str, settings: Any, warmup: Any, batch: int,
                   prompts: list[str], seeds: list[int]) -> tuple[dict[str, Any], torch.Tensor]:
    """diffusers' pipeline in a subprocess (benchmarks/karlo_reference.py): its figures and its images."""
    job = {"folder": str(folder), "device": ctx.device.type, "dtype": dtype, "prompts": prompts, "seeds": seeds,
           "batch": batch, "threads": torch.get_num_threads(), "settings": dataclasses.asdict(settings),
           "warmup": dataclasses.asdict(warmup), "images": str(ctx.work / "reference_images.pt"),
           "result": str(ctx.work / "reference_result.json")}
    job_path = ctx.work / "reference_job.json"
    job_path.write_text(json.dumps(job, indent=2))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("karlo_reference.py")), str(job_path)],
                          check=False, capture_output=True, text=True, timeout=REFERENCE_TIMEOUT_S)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the diffusers reference failed (exit {done.returncode}): {last}\n{done.stderr[-3000:]}")
    return json.loads(Path(job["result"]).read_text()), torch.load(job["images"])


def _sample(model: Any, prompts: list[str], seeds: list[int], batch: int, settings: Any) -> list[torch.Tensor]:
    """Every prompt's image, `batch` at a time, as dalle's [-1, 1] tensors on the model's device."""
    return [model.generate_tensors(prompts[i:i + batch], seeds[i:i + batch], settings)
            for i in range(0, len(prompts), batch)]


def _time_dalle(ctx: Context, section: Section, folder: Path, prompts: list[str],
                seeds: list[int]) -> tuple[dict[tuple[str, bool, int], torch.Tensor], Any, Any]:
    """Load and sample every plan through `dalle_cli.load`, appending a row each. Returns the images by (dtype,
    low_vram, batch) as reference pixels, the settings sampled with (the model's defaults; 3/3/2 steps for the toy
    run) and the 2-step warm-up settings run before each timing."""
    device, n = ctx.device, len(prompts)
    images: dict[tuple[str, bool, int], torch.Tensor] = {}
    settings = warmup = None
    for plan in plans(device, n):
        if plan.skip:
            for batch in plan.batches:
                section.rows.append({"impl": "dalle", "dtype": plan.dtype, "low_vram": plan.low_vram,
                                     "batch": batch, "status": "skipped", "reason": plan.skip})
            continue
        leftover = allocated(device)  # should be ~0: the previous model must be gone before this load is measured
        loaded = measure(partial(dalle_cli.load, str(folder), device=device.type, dtype=plan.dtype,
                                 low_vram=plan.low_vram), device)
        model, resident = loaded.value, allocated(device)
        if settings is None:
            settings = model.defaults if not ctx.small else dataclasses.replace(
                model.defaults, prior_steps=3, decoder_steps=3, sr_steps=2)
            warmup = dataclasses.replace(settings, prior_steps=2, decoder_steps=2, sr_steps=2)
            section.figures["settings"] = dataclasses.asdict(settings)
        ctx.log(f"dalle {plan.dtype}{' low-VRAM' if plan.low_vram else ''}: loaded in {loaded.seconds:.1f} s")
        for batch in plan.batches:
            _sample(model, prompts, seeds, batch, warmup)  # first-call costs (CUDA context, kernel choice for
            # these shapes) stay out of the timing
            sampled = measure(partial(_sample, model, prompts, seeds, batch, settings), device)
            images[plan.dtype, plan.low_vram, batch] = reference_pixels(torch.cat(sampled.value))
            section.rows.append({
                "impl": "dalle", "dtype": plan.dtype, "low_vram": plan.low_vram, "batch": batch, "status": "ok",
                "images": n, "load_s": loaded.seconds, "load_peak_bytes": loaded.peak_bytes,
                "resident_bytes": resident, "leftover_bytes_before_load": leftover,
                "sample_s_per_image": sampled.seconds / n, "sample_peak_bytes": sampled.peak_bytes})
            ctx.log(f"  batch {batch}: {sampled.seconds / n:.2f} s per image")
            ctx.save()
        del model, loaded
        release(device)
    return images, settings, warmup


def _add_rates(section: Section, flops: float, device: torch.device) -> None:
    for row in section.rows:
        if row["status"] == "ok":
            row["tflops"], row["fraction_of_h200_bf16"] = _rate(flops, row["sample_s_per_image"], device)


def karlo(ctx: Context, section: Section) -> None:
    """Karlo v1 alpha: random weights at full size (or the toy size), dalle against diffusers."""
    device, n = ctx.device, (2 if ctx.small else 4)
    prompts, seeds = PROMPTS[:n], list(range(n))
    main_dtype = "fp16" if device.type == "cuda" else "fp32"
    recipe = Recipe(small=ctx.small, dtype="fp16" if device.type == "cuda" else "fp32")
    folder = ctx.work / ("karlo-random-small" if ctx.small else "karlo-random")
    ctx.log(f"building random Karlo ({'toy' if ctx.small else 'full'} size, {recipe.dtype}) in {folder}")
    section.figures["weights"] = {**save_random_karlo(folder, recipe, device, ctx.log), "recipe": recipe.__dict__,
                                  "folder": str(folder)}
    release(device)

    images, settings, warmup = _time_dalle(ctx, section, folder, prompts, seeds)
    ours = images[main_dtype, False, n]

    def delta(key: tuple[str, bool, int]) -> float | None:
        return (images[key] - ours).abs().max().item() if key in images else None

    # dalle's own figures first, so that a failing reference still leaves them in the report.
    flops = flops_per_image(folder, settings.prior_steps, settings.decoder_steps, settings.sr_steps)
    total = sum(flops.values())
    _add_rates(section, total, device)
    low_vram_peaks = [r["sample_peak_bytes"] for r in section.rows if r.get("low_vram") and r["status"] == "ok"]
    section.figures.update({
        "flops_per_image": total, "flops_per_image_by_network": flops, "image_shape": list(ours.shape),
        "max_abs_delta_batch_1_vs_batch_n": delta((main_dtype, False, 1)),
        "max_abs_delta_low_vram_vs_normal": delta((main_dtype, True, n)),
        "max_abs_delta_bf16_vs_fp16": delta(("bf16", False, n)),
        "informative_fraction_dalle": informative(ours),
        "low_vram_peak_bytes": max(low_vram_peaks) if device.type == "cuda" and low_vram_peaks else None,
        "low_vram_goal_bytes": 4e9,
    })
    ctx.save()

    ctx.log(f"diffusers UnCLIPPipeline {main_dtype}, batch {n}, in its own process")
    ref, ref_images = _run_reference(ctx, folder, main_dtype, settings, warmup, n, prompts, seeds)
    section.rows.append({
        "impl": "diffusers", "dtype": main_dtype, "low_vram": False, "batch": n, "status": "ok", "images": n,
        "load_s": ref["load_s"], "load_peak_bytes": ref["load_peak_bytes"], "resident_bytes": ref["resident_bytes"],
        "sample_s_per_image": ref["sample_s"] / n, "sample_peak_bytes": ref["sample_peak_bytes"],
        "versions": ref["versions"]})
    _add_rates(section, total, device)
    section.figures.update({
        "max_abs_delta_vs_diffusers": (ref_images - ours).abs().max().item(),
        "informative_fraction_diffusers": informative(ref_images),
        "nonfinite_pixels": {"dalle": sum(int((~x.isfinite()).sum()) for x in images.values()),
                             "diffusers": int((~ref_images.isfinite()).sum())},
    })


# One entry per model family. Kandinsky 2.2 (issue 17, item 5) has not landed; its section will be another function
# with karlo's signature, filling a Section with the same row and figure keys.
SECTIONS: dict[str, Callable[[Context, Section], None]] = {"karlo": karlo}


def _gb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e9:.2f}"


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _figure_lines(section: dict[str, Any]) -> list[str]:
    """A section's figures besides the table, as far as it got: a run cut short lists what it measured."""
    f, lines = section["figures"], []
    if "settings" in f:
        s = f["settings"]
        lines.append(f"{section['model']}: steps {s['prior_steps']}/{s['decoder_steps']}/{s['sr_steps']}, guidance "
                     f"{s['prior_guidance']}/{s['decoder_guidance']}, images {f.get('image_shape', '?')}")
    if "flops_per_image" in f:
        by_net = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in f["flops_per_image_by_network"].items())
        lines += [f"- FLOPs per image (batch 1): {f['flops_per_image'] / 1e12:.4g} T ({by_net})",
                  (f"- max |Δ| dalle batch 1 vs batch {f['image_shape'][0]}: "
                   f"{f['max_abs_delta_batch_1_vs_batch_n']:.3g}; low-VRAM vs not: "
                   f"{f['max_abs_delta_low_vram_vs_normal']:.3g}; bf16 vs fp16: "
                   f"{_num(f['max_abs_delta_bf16_vs_fp16'], '.3g')}"),
                  f"- low-VRAM sampling peak: {_gb(f['low_vram_peak_bytes'])} GB (goal ≤ 4 GB)"]
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
    parser.add_argument("--small", action="store_true", help="the tests' toy widths, 2 images, 3/3/2 steps")
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
