"""The model sections of benchmarks/gpu_check.py (Karlo, Kandinsky 2.2) and the measuring they share.

A section is a function `(Context, Section) -> None` that builds its model's random weights under `Context.work`, times
dalle's text-to-image through `dalle_cli.load` for each `Plan`, runs diffusers on the same folders in a subprocess,
and fills the `Section` with rows (one per configuration, measured or skipped) and figures. gpu_check.py puts the
repo root on sys.path before importing this module: the device machine has the repo but no install of dalle_cli.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import kandinsky_random
import karlo_random
import torch
from bench_timing import allocated, measure, release

import dalle_cli
from dalle_cli.families import FAMILIES
from dalle_cli.settings import Settings

H200_DENSE_TFLOPS = 790.0  # an 8192³ bf16 matmul on this workplace's H200s (device KINDS.md)
PROMPTS = ["an astronaut riding a horse on the moon", "a bowl of soup that is also a portal to another dimension",
           "a watercolour painting of a lighthouse at dawn", "a corgi wearing a tiny wizard hat"]
REFERENCE_TIMEOUT_S = 300
# Kandinsky 2.2's defaults (KandinskyV22CombinedPipeline's), pinned here so that the check measures what it says;
# --small changes only the steps and the size.
KANDINSKY_SETTINGS = {"prior_steps": 25, "decoder_steps": 100, "prior_guidance": 4.0, "decoder_guidance": 4.0,
                      "width": 512, "height": 512, "negative_prompt": ""}
KANDINSKY_SMALL = {"prior_steps": 3, "decoder_steps": 3, "width": 64, "height": 64}
# What the low-VRAM mode should hold at most: the issue's goal for Karlo; Kandinsky 2.2's largest stage, the image
# encoder (3.69 GB in fp16) or the text encoder and prior (3.44 GB), fits under it with its activations.
LOW_VRAM_GOAL_BYTES = 4e9
KANDINSKY_STAGES = {"text_encoder+prior": ("text_encoder", "prior"), "image_encoder": ("image_encoder",),
                    "unet": ("unet",), "movq": ("movq",)}  # what low-VRAM mode holds together


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



def _given(settings: Settings) -> dict:
    """The settings as a generated image's record holds them: those text to image reads, none left at None."""
    family = next(f for f in FAMILIES.values() if isinstance(settings, f.settings))
    return settings.used("generate", family.operations["generate"])


def plans(device: torch.device, images: int, low_vram_batches: tuple[int, ...] | None = None) -> list[Plan]:
    """The loads the check measures: fp16 (batch 1 and all images at once), the same with low-VRAM (or at
    `low_vram_batches`), and bf16 at full batch. On the CPU the fp16 plans run in fp32, and the half-precision
    plans are listed as skipped."""
    low = low_vram_batches or (1, images)
    if device.type == "cuda":
        return [Plan("fp16", False, (1, images)), Plan("fp16", True, low), Plan("bf16", False, (images,))]
    why = "needs CUDA: half precision on the CPU is slow and not what this check measures"
    return [Plan("fp32", False, (1, images)), Plan("fp32", True, low),
            Plan("fp16", False, (1, images), why), Plan("fp16", True, low, why),
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


def _run_reference(ctx: Context, script: str, folders: dict[str, str], dtype: str, settings: Any, warmup: Any,
                   batch: int, prompts: list[str], seeds: list[int]) -> tuple[dict[str, Any], torch.Tensor]:
    """A diffusers reference script (benchmarks/`script`) in a subprocess on `folders`: its figures and images."""
    stem = Path(script).stem
    job = {**folders, "device": ctx.device.type, "dtype": dtype, "prompts": prompts, "seeds": seeds,
           "batch": batch, "threads": torch.get_num_threads(), "settings": _given(settings),
           "warmup": dataclasses.asdict(warmup), "images": str(ctx.work / f"{stem}_images.pt"),
           "result": str(ctx.work / f"{stem}_result.json")}
    job_path = ctx.work / f"{stem}_job.json"
    job_path.write_text(json.dumps(job, indent=2))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name(script)), str(job_path)],
                          check=False, capture_output=True, text=True, timeout=REFERENCE_TIMEOUT_S)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the diffusers reference failed (exit {done.returncode}): {last}\n{done.stderr[-3000:]}")
    return json.loads(Path(job["result"]).read_text()), torch.load(job["images"])


def _reference_row(section: Section, ref: dict[str, Any], dtype: str, n: int) -> None:
    section.rows.append({
        "impl": "diffusers", "dtype": dtype, "low_vram": False, "batch": n, "status": "ok", "images": n,
        "load_s": ref["load_s"], "load_peak_bytes": ref["load_peak_bytes"], "resident_bytes": ref["resident_bytes"],
        "sample_s_per_image": ref["sample_s"] / n, "sample_peak_bytes": ref["sample_peak_bytes"],
        "versions": ref["versions"]})


def _sample(model: Any, prompts: list[str], seeds: list[int], batch: int, settings: Any) -> list[torch.Tensor]:
    """Every prompt's image, `batch` at a time, as dalle's [-1, 1] tensors on the model's device."""
    return [model.generate_tensors(prompts[i:i + batch], seeds[i:i + batch], settings)
            for i in range(0, len(prompts), batch)]


Images = dict[tuple[str, bool, int], torch.Tensor]  # reference pixels by (dtype, low_vram, batch)


def _time_dalle(ctx: Context, section: Section, todo: list[Plan], loader: Callable[[Plan], Callable[[], Any]],
                choose: Callable[[Any], tuple[Any, Any]], prompts: list[str], seeds: list[int],
                inspect: Callable[[Any], dict[str, Any]] | None = None) -> tuple[Images, Any, Any]:
    """Load and sample every plan of `todo`, appending a row each. `loader(plan)` gives the load to measure;
    `choose(model)` the settings to sample with and the shorter warm-up run before each timing (kept out of the
    timing, its seconds and peak are in the row: the first includes first-call costs); `inspect(model)`, after the
    sampling, more fields for the rows. Returns the images by (dtype, low_vram, batch) as reference pixels, and the
    settings and warm-up settings (None when every plan was skipped); the settings also go into the figures."""
    device, n = ctx.device, len(prompts)
    images: Images = {}
    settings = warmup = None
    for plan in todo:
        if plan.skip:
            for batch in plan.batches:
                section.rows.append({"impl": "dalle", "dtype": plan.dtype, "low_vram": plan.low_vram,
                                     "batch": batch, "status": "skipped", "reason": plan.skip})
            continue
        leftover = allocated(device)  # should be ~0: the previous model must be gone before this load is measured
        loaded = measure(loader(plan), device)
        model, resident = loaded.value, allocated(device)
        settings, warmup = choose(model)
        section.figures.setdefault("settings", _given(settings))
        ctx.log(f"dalle {plan.dtype}{' low-VRAM' if plan.low_vram else ''}: loaded in {loaded.seconds:.1f} s")
        for batch in plan.batches:
            # first-call costs (CUDA context, kernel choice for these shapes) stay out of the timing
            warmed = measure(partial(_sample, model, prompts, seeds, batch, warmup), device)
            sampled = measure(partial(_sample, model, prompts, seeds, batch, settings), device)
            images[plan.dtype, plan.low_vram, batch] = reference_pixels(torch.cat(sampled.value))
            section.rows.append({
                "impl": "dalle", "dtype": plan.dtype, "low_vram": plan.low_vram, "batch": batch, "status": "ok",
                "images": n, "load_s": loaded.seconds, "load_peak_bytes": loaded.peak_bytes,
                "resident_bytes": resident, "leftover_bytes_before_load": leftover,
                "warmup_s": warmed.seconds, "warmup_peak_bytes": warmed.peak_bytes,
                "sample_s_per_image": sampled.seconds / n, "sample_peak_bytes": sampled.peak_bytes,
                **(inspect(model) if inspect else {})})
            ctx.log(f"  batch {batch}: {sampled.seconds / n:.2f} s per image")
            ctx.save()
        del model, loaded
        release(device)
    return images, settings, warmup


def _add_rates(section: Section, flops: float, device: torch.device) -> None:
    for row in section.rows:
        if row["status"] == "ok":
            row["tflops"], row["fraction_of_h200_bf16"] = _rate(flops, row["sample_s_per_image"], device)


def _figures(section: Section, images: Images, main: tuple[str, bool, int], device: torch.device,
             flops: dict[str, float]) -> None:
    """The figures both sections report from dalle's own runs: FLOPs and rates, agreement between dalle's
    configurations, informativeness and the low-VRAM peak."""
    ours = images[main]
    dtype, _, n = main

    def delta(key: tuple[str, bool, int]) -> float | None:
        return (images[key] - ours).abs().max().item() if key in images else None

    _add_rates(section, sum(flops.values()), device)
    low_vram_peaks = [r["sample_peak_bytes"] for r in section.rows if r.get("low_vram") and r["status"] == "ok"]
    section.figures.update({
        "flops_per_image": sum(flops.values()), "flops_per_image_by_network": flops, "image_shape": list(ours.shape),
        "max_abs_delta_batch_1_vs_batch_n": delta((dtype, False, 1)),
        "max_abs_delta_low_vram_vs_normal": delta((dtype, True, n)),
        "max_abs_delta_bf16_vs_fp16": delta(("bf16", False, n)),
        "informative_fraction_dalle": informative(ours),
        "low_vram_peak_bytes": max(low_vram_peaks) if device.type == "cuda" and low_vram_peaks else None,
        "low_vram_goal_bytes": LOW_VRAM_GOAL_BYTES,
    })


def _agreement(section: Section, images: Images, main: tuple[str, bool, int], ref_images: torch.Tensor) -> None:
    section.figures.update({
        "max_abs_delta_vs_diffusers": (ref_images - images[main]).abs().max().item(),
        "informative_fraction_diffusers": informative(ref_images),
        "nonfinite_pixels": {"dalle": sum(int((~x.isfinite()).sum()) for x in images.values()),
                             "diffusers": int((~ref_images.isfinite()).sum())},
    })


def karlo(ctx: Context, section: Section) -> None:
    """Karlo v1 alpha: random weights at full size (or the toy size), dalle against diffusers."""
    device, n = ctx.device, (2 if ctx.small else 4)
    prompts, seeds = PROMPTS[:n], list(range(n))
    main_dtype = "fp16" if device.type == "cuda" else "fp32"
    recipe = karlo_random.Recipe(small=ctx.small, dtype="fp16" if device.type == "cuda" else "fp32")
    folder = ctx.work / ("karlo-random-small" if ctx.small else "karlo-random")
    ctx.log(f"building random Karlo ({'toy' if ctx.small else 'full'} size, {recipe.dtype}) in {folder}")
    section.figures["weights"] = {**karlo_random.save_random_karlo(folder, recipe, device, ctx.log),
                                  "recipe": recipe.__dict__, "folder": str(folder)}
    release(device)

    def loader(plan: Plan) -> Callable[[], Any]:
        return partial(dalle_cli.load, str(folder), device=device.type, dtype=plan.dtype, low_vram=plan.low_vram)

    def choose(model: Any) -> tuple[Any, Any]:
        settings = model.defaults if not ctx.small else dataclasses.replace(
            model.defaults, prior_steps=3, decoder_steps=3, sr_steps=2)
        return settings, dataclasses.replace(settings, prior_steps=2, decoder_steps=2, sr_steps=2)

    images, settings, warmup = _time_dalle(ctx, section, plans(device, n), loader, choose, prompts, seeds)
    main = (main_dtype, False, n)
    # dalle's own figures first, so that a failing reference still leaves them in the report.
    _figures(section, images, main, device,
             karlo_random.flops_per_image(folder, settings.prior_steps, settings.decoder_steps, settings.sr_steps))
    ctx.save()

    ctx.log(f"diffusers UnCLIPPipeline {main_dtype}, batch {n}, in its own process")
    ref, ref_images = _run_reference(ctx, "karlo_reference.py", {"folder": str(folder)}, main_dtype, settings,
                                     warmup, n, prompts, seeds)
    _reference_row(section, ref, main_dtype, n)
    _add_rates(section, section.figures["flops_per_image"], device)
    _agreement(section, images, main, ref_images)


def _stage_bytes(prior: Path, decoder: Path) -> dict[str, int]:
    """The weights each low-VRAM stage of Kandinsky 2.2 holds, in bytes of the stored dtype (file sizes: a header of
    a few kB each aside)."""
    files = {name: (prior if role == "prior" else decoder) / name / weights
             for name, (role, weights) in kandinsky_random.NETWORKS.items()}
    return {stage: sum(files[name].stat().st_size for name in names) for stage, names in KANDINSKY_STAGES.items()}


def kandinsky(ctx: Context, section: Section) -> None:
    """Kandinsky 2.2 at 512×512 (or the toy size at 64×64): random weights, dalle against diffusers' combined
    pipeline. Every load starts with a cold zero-image-embedding cache (a fresh `$DALLE_CACHE` under --work), so
    each plan's first warm-up loads the image encoder and computes the embedding, as a first run does; the timed runs
    then read it from the cache. bf16 runs after the reference: it is the first thing to go if time runs short."""
    device, n = ctx.device, (2 if ctx.small else 4)
    prompts, seeds = PROMPTS[:n], list(range(n))
    main_dtype = "fp16" if device.type == "cuda" else "fp32"
    recipe = kandinsky_random.Recipe(small=ctx.small, dtype="fp16" if device.type == "cuda" else "fp32")
    root = ctx.work / ("kandinsky-random-small" if ctx.small else "kandinsky-random")
    prior, decoder = kandinsky_random.folders(root)
    ctx.log(f"building random Kandinsky 2.2 ({'toy' if ctx.small else 'full'} size, {recipe.dtype}) in {root}")
    section.figures["weights"] = {**kandinsky_random.save_random_kandinsky(root, recipe, device, ctx.log),
                                  "recipe": recipe.__dict__, "folder": str(root)}
    release(device)
    cache = ctx.work / "dalle-cache"
    os.environ["DALLE_CACHE"] = str(cache)  # read by dalle when it looks the embedding up, so set for the process

    def loader(plan: Plan) -> Callable[[], Any]:
        shutil.rmtree(cache, ignore_errors=True)  # before the measured load: every plan starts cold
        return partial(dalle_cli.load, str(decoder), device=device.type, dtype=plan.dtype, low_vram=plan.low_vram,
                       parts={"prior": str(prior)})

    def choose(model: Any) -> tuple[Any, Any]:
        pinned = {**KANDINSKY_SETTINGS, **(KANDINSKY_SMALL if ctx.small else {})}
        settings = dataclasses.replace(model.defaults, **pinned)
        return settings, dataclasses.replace(settings, prior_steps=2, decoder_steps=2)

    def inspect(model: Any) -> dict[str, Any]:
        return {"image_encoder_loaded": model.parts.image_encoder is not None,
                "zero_embed_cached": any(cache.rglob("*.safetensors"))}

    # Low-VRAM at full batch only: the largest activations give its peak, and every call moves all the weights.
    todo = plans(device, n, (n,))
    images, settings, warmup = _time_dalle(ctx, section, [p for p in todo if p.dtype != "bf16"], loader, choose,
                                           prompts, seeds, inspect)
    main = (main_dtype, False, n)
    flops = kandinsky_random.flops_per_image(root, settings.prior_steps, settings.decoder_steps, settings.width,
                                             settings.height)
    _figures(section, images, main, device, flops)
    low = [r for r in section.rows if r.get("low_vram") and r["status"] == "ok"]
    section.figures.update({
        "zero_embed_cache": "cold at every load", "low_vram_stage_bytes": _stage_bytes(prior, decoder),
        "low_vram_warmup_peak_bytes": max(r["warmup_peak_bytes"] for r in low) if device.type == "cuda" else None})
    ctx.save()

    ctx.log(f"diffusers KandinskyV22CombinedPipeline {main_dtype}, batch {n}, in its own process")
    ref, ref_images = _run_reference(ctx, "kandinsky_reference.py", {"folder": str(decoder), "prior": str(prior)},
                                     main_dtype, settings, warmup, n, prompts, seeds)
    _reference_row(section, ref, main_dtype, n)
    _add_rates(section, section.figures["flops_per_image"], device)
    _agreement(section, images, main, ref_images)
    ctx.save()

    more, _, _ = _time_dalle(ctx, section, [p for p in todo if p.dtype == "bf16"], loader, choose, prompts, seeds,
                             inspect)
    images.update(more)
    _figures(section, images, main, device, flops)
    _agreement(section, images, main, ref_images)
