"""Speed and memory of dalle's text-to-image next to diffusers', each in a process of its own, on the same weights.

    python benchmarks/pipeline_speed.py [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--models karlo kandinsky
                                        karlo-full]
                                        [--batches 1 4 8] [--threads N] [--work DIR] [--compile]

The models, with random weights built once under --work and reused (benchmarks/karlo_random.py,
benchmarks/kandinsky_random.py; the files are read once before the first process starts, so that both load them from
the page cache):
- karlo: Karlo v1 alpha's real depths and block layout (12 text-encoder layers, 20 prior layers, UNets of 3 residual
  blocks a level with Karlo's block types and attention levels) and resolutions (64 px decoder, 256 px images) at
  1/32 of its widths (karlo_random's `Recipe.narrow`; the decoder's attention heads are 10 channels wide, 2 to 4 a
  level, see its NARROW_HEADS), at Karlo's default settings: 25 prior, 25 decoder and 7
  super-resolution steps, guidance 4 and 8;
- kandinsky: Kandinsky 2.2's block layout at the tests' toy widths (kandinsky_random's `Recipe(small=True)`), at
  256×256 with fewer steps than its defaults (KANDINSKY: 25 prior and 25 decoder steps instead of 25 and 100),
  guidance 4 and 4;
- karlo-full (only when named in --models): Karlo at its real size (karlo_random's full recipe, fp16 files), 2 steps a
  stage and no warm-up, for its memory: the weights dominate the peak there, where at the narrow widths the imports
  do. dalle runs in low-memory mode, as `dalle gen` runs a single batch on the CPU (each stage's weights read when it
  starts and freed when the next starts), so its load figure is the headers' check alone and the reading is in its
  sampling time. Run it with `--batches 1`.
Both implementations get the same folders, prompts (gpu_sections' four, cycled), seeds (image i: seed i), steps and
guidance, in the same device, dtype and number of torch threads (--threads, default torch's; also OMP_NUM_THREADS
and MKL_NUM_THREADS in both processes' environments).

How, for each model: dalle (benchmarks/dalle_job.py) and then diffusers (benchmarks/karlo_reference.py,
benchmarks/kandinsky_reference.py; UnCLIPPipeline, KandinskyV22CombinedPipeline) each run in a fresh Python process
from the same JOB.json, timed by benchmarks/bench_timing.py's `run_job`: the load is timed, then at each batch size b
one warm-up call of b images at 2 steps a stage (first-call costs out of the timing) and one timed call of b images
at the settings above. One process per implementation and model covers every batch size, so its peak resident
memory (`ru_maxrss`) is that of the imports, the load and sampling at the largest batch, which is what a user's
process holding the model needs; on CUDA the peak reported is instead the largest `torch.cuda.max_memory_allocated()`
of the load and of each call. dalle's Kandinsky 2.2 process starts with an empty zero-image-embedding cache (a fresh
$DALLE_CACHE), so it loads the image encoder, as diffusers' pipeline does; its first warm-up computes the embedding.

Prints a table per model: for each implementation the seconds per image at the smallest batch, images per second at
each batch, the peak memory and the load seconds; then the ratios dalle ÷ diffusers (images per second, so above 1
dalle is faster; peak memory; load seconds), the max and mean |Δ| between the two implementations' images (all of
them, pixels in [0, 1]) and the share of pixels off the clip (saturated images would agree trivially). In fp32 the
images differ by rounding only. Karlo's keep that rounding small. The toy Kandinsky 2.2 amplifies it at 256×256: its
random MoVQ saturates a few patches, whose unclipped pixels sit on steep edges between clipped ones, and there the
same float32 rounding moves a pixel by far more than elsewhere (diffusers against itself, at 1 and then 2 threads,
differs about as much as dalle against diffusers), so its max |Δ| is that of those few pixels and its mean |Δ| is
the better summary. With --compile dalle's networks run through torch.compile (`load(compile=True)`; not for
karlo-full, whose low-memory mode cannot compile): each batch size's warm-up call then compiles for that batch, and
the table adds each implementation's warm-up seconds per batch, so the compile time shows apart from the timed calls
(the reference's warm-up is the same call uncompiled). Everything, with both processes' JSON results, goes to
--work/pipeline_speed.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # the device machine has the repo but no install of dalle_cli
    sys.path.insert(0, str(HERE.parent))

import kandinsky_random
import karlo_random
from bench_timing import DTYPES
from gpu_sections import KANDINSKY_SETTINGS, PROMPTS, informative

WORKER_TIMEOUT_S = 1800
KARLO = {"prior_steps": 25, "decoder_steps": 25, "sr_steps": 7, "prior_guidance": 4.0, "decoder_guidance": 8.0}
KANDINSKY = {**KANDINSKY_SETTINGS, "prior_steps": 25, "decoder_steps": 25, "width": 256, "height": 256}
# --quick, for a smoke test of the script: a few steps (and Kandinsky 2.2 at 64×64), so the figures mean little.
QUICK = {"karlo": {"prior_steps": 3, "decoder_steps": 3, "sr_steps": 2},
         "kandinsky": {"prior_steps": 3, "decoder_steps": 3, "width": 64, "height": 64}}


@dataclass(frozen=True)
class Bench:
    """One model: its title, its diffusers script, its settings (dalle's names), the steps of its warm-up calls, and
    the function that writes its weights under --work, `build(work, stored dtype, device)`, giving the JOB.json's
    folder keys."""

    title: str
    reference: str
    settings: dict[str, Any]
    warmup_steps: dict[str, int] | None
    build: Callable[[Path, str, torch.device], dict[str, str]]
    low_memory: bool = False  # dalle in low-memory mode, as `dalle gen` runs a single batch on the CPU


def _karlo(work: Path, store: str, device: torch.device) -> dict[str, str]:
    folder = work / f"karlo-narrow-{store}"
    karlo_random.save_random_karlo(folder, karlo_random.Recipe(small=False, narrow=True, dtype=store), device)
    return {"folder": str(folder)}


def _karlo_full(work: Path, store: str, device: torch.device) -> dict[str, str]:
    folder = work / "karlo-full-fp16"  # Karlo's hub files are fp16 whatever the run's dtype
    karlo_random.save_random_karlo(folder, karlo_random.Recipe(small=False, dtype="fp16"), device)
    return {"folder": str(folder)}


def _kandinsky(work: Path, store: str, device: torch.device) -> dict[str, str]:
    root = work / f"kandinsky-small-{store}"
    kandinsky_random.save_random_kandinsky(root, kandinsky_random.Recipe(small=True, dtype=store), device)
    prior, decoder = kandinsky_random.folders(root)
    return {"folder": str(decoder), "prior": str(prior)}


BENCHES = {
    "karlo": Bench(f"Karlo, real depths at 1/{karlo_random.NARROW_DIVISOR} of its widths, 64 px decoder, 256 px images",
                   "karlo_reference.py", KARLO, {"prior_steps": 2, "decoder_steps": 2, "sr_steps": 2}, _karlo),
    "kandinsky": Bench("Kandinsky 2.2, its block layout at the tests' toy widths", "kandinsky_reference.py",
                       KANDINSKY, {"prior_steps": 2, "decoder_steps": 2}, _kandinsky),
    "karlo-full": Bench("Karlo at its real size (3.7 B parameters), the memory of one image: dalle as `dalle gen` "
                        "runs one batch on the CPU (low-memory mode)", "karlo_reference.py",
                        {**KARLO, "prior_steps": 2, "decoder_steps": 2, "sr_steps": 2}, None, _karlo_full, True),
}


def _warm_page_cache(folders: dict[str, str]) -> None:
    """Read every weights file once, so that neither process pays for reading them from the disk."""
    for folder in folders.values():
        for path in Path(folder).rglob("*.safetensors"):
            with open(path, "rb") as f:  # in chunks: this process's peak RSS is where the workers' starts
                while f.read(1 << 24):
                    pass


def _worker(script: str, job: dict[str, Any], path: Path,
            env: dict[str, str]) -> tuple[dict[str, Any], torch.Tensor, float]:
    """Run benchmarks/`script` on `job`, written to `path`, in a fresh process with `env`: its result, its images and
    the process's wall-clock seconds."""
    path.write_text(json.dumps(job, indent=2) + "\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / script), str(path)], env=env, capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{script} {path} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(Path(job["result"]).read_text()), torch.load(job["images"]), wall


def _peak(result: dict[str, Any], cuda: bool) -> float:
    """The process's peak memory in bytes: on CUDA the largest allocated peak of the load and of every call."""
    if not cuda:
        return result["peak_rss_bytes"]
    calls = [r[key] for r in result["runs"] for key in ("warmup_peak_bytes", "sample_peak_bytes")]
    return max([result["load_peak_bytes"], *calls])


def _row(name: str, cells: list[str]) -> str:
    return f"  {name:<17}" + "".join(f"{c:>11}" for c in cells)


def _report(bench: Bench, results: dict[str, dict[str, Any]], images: dict[str, torch.Tensor], cuda: bool,
            batches: list[int], heading: str, compiled: bool) -> dict[str, Any]:
    """Print the model's table and return its figures; with `compiled`, the warm-up seconds (dalle's compile)."""
    figures: dict[str, Any] = {}
    for impl, result in results.items():
        runs = {r["batch"]: r for r in result["runs"]}
        figures[impl] = {"s_per_image": {b: runs[b]["sample_s"] / runs[b]["images"] for b in batches},
                         "images_per_s": {b: runs[b]["images"] / runs[b]["sample_s"] for b in batches},
                         "warmup_s": {b: runs[b]["warmup_s"] for b in batches},
                         "peak_bytes": _peak(result, cuda), "load_s": result["load_s"],
                         "off_the_clip": informative(images[impl])}
    ours, theirs = figures["dalle"], figures["diffusers"]
    ratios = {"images_per_s": {b: ours["images_per_s"][b] / theirs["images_per_s"][b] for b in batches},
              "peak": ours["peak_bytes"] / theirs["peak_bytes"], "load": ours["load_s"] / theirs["load_s"]}
    difference = (images["dalle"] - images["diffusers"]).abs()
    delta, mean = difference.max().item(), difference.mean().item()
    memory = "peak alloc" if cuda else "peak RSS"
    print(f"\n{bench.title}\n{heading}")
    print(_row("", ["s/image", *("images/s" for _ in batches), memory, "load"]))
    print(_row("", [f"batch {batches[0]}", *(f"batch {b}" for b in batches), "GiB", "s"]))
    for impl, f in figures.items():
        print(_row(impl, [f"{f['s_per_image'][batches[0]]:.3f}", *(f"{f['images_per_s'][b]:.3f}" for b in batches),
                          f"{f['peak_bytes'] / 2**30:.3f}", f"{f['load_s']:.2f}"]))
    print(_row("dalle ÷ diffusers", ["", *(f"×{ratios['images_per_s'][b]:.2f}" for b in batches),
                                     f"×{ratios['peak']:.2f}", f"×{ratios['load']:.2f}"]))
    if compiled:
        for impl, f in figures.items():
            print(_row(f"{impl} warm-up s", ["", *(f"{f['warmup_s'][b]:.1f}" for b in batches)]))
        print("  (dalle's warm-ups compile its networks for each batch size: that is the compile time)")
    print("  (images/s ratio above 1: dalle is faster; memory and load ratios below 1: dalle needs less)")
    if not cuda:
        print("  peak RSS before loading (imports): " + ", ".join(
            f"{impl} {r['rss_before_load_bytes'] / 2**30:.3f} GiB" for impl, r in results.items()))
    print(f"  dalle vs diffusers over all {len(images['dalle'])} images (pixels in [0, 1]): max |Δ| {delta:.2e}, "
          f"mean |Δ| {mean:.1e}; off the clip: dalle {ours['off_the_clip']:.1%}, "
          f"diffusers {theirs['off_the_clip']:.1%}")
    return {"figures": figures, "ratios": ratios, "max_abs_delta": delta, "mean_abs_delta": mean, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--models", nargs="+", default=["karlo", "kandinsky"], choices=list(BENCHES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", type=Path, default=Path("/tmp/dalle-bench"))
    parser.add_argument("--compile", action="store_true", help="dalle's networks through torch.compile")
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda, batches, work = args.device == "cuda", sorted(set(args.batches)), args.work.resolve()
    n = max(batches)
    prompts, seeds = [PROMPTS[i % len(PROMPTS)] for i in range(n)], list(range(n))
    store = "fp16" if args.dtype == "fp16" else "fp32"  # the weights' stored dtype
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    report: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "threads": args.threads,
                              "batches": batches, "models": {}}
    for name in args.models:
        bench = BENCHES[name]
        settings = {**bench.settings, **(QUICK[name] if args.quick else {})}
        warmup = {**settings, **bench.warmup_steps} if bench.warmup_steps is not None else None
        print(f"building (or reusing) the {name} weights under {work}", flush=True)
        folders = bench.build(work, store, torch.device("cpu"))  # small: no CUDA context in this process
        _warm_page_cache(folders)
        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        cache = out / "dalle-cache"
        compiled = args.compile and not bench.low_memory
        results, images = {}, {}
        for impl, script in (("dalle", "dalle_job.py"), ("diffusers", bench.reference)):
            shutil.rmtree(cache, ignore_errors=True)  # dalle starts without its zero-image-embedding cache
            job = {**folders, "device": args.device, "dtype": args.dtype, "prompts": prompts, "seeds": seeds,
                   "batches": batches, "threads": args.threads, "settings": settings, "warmup": warmup,
                   "low_memory": bench.low_memory and impl == "dalle", "compile": compiled and impl == "dalle",
                   "images": str(out / f"{impl}_images.pt"), "result": str(out / f"{impl}_result.json")}
            print(f"  {impl} in its own process ...", flush=True)
            results[impl], images[impl], wall = _worker(script, job, out / f"{impl}_job.json",
                                                        {**env, "DALLE_CACHE": str(cache)})
            results[impl]["process_wall_s"] = wall
            print(f"  {impl}: {wall:.1f} s for the whole process", flush=True)
        steps = "/".join(str(v) for k, v in settings.items() if k.endswith("_steps"))
        guidance = "/".join(f"{v:g}" for k, v in settings.items() if k.endswith("_guidance"))
        size = f", {settings['width']}×{settings['height']}" if "width" in settings else ""
        heading = (f"{steps} steps, guidance {guidance}{size}; {args.device} {args.dtype}, "
                   f"{args.threads} thread{'s' * (args.threads != 1)}; "
                   f"batches {', '.join(map(str, batches))}, one call of b images each"
                   f"{'; dalle compiled' if compiled else ''}")
        report["models"][name] = {"settings": settings, "warmup": warmup, "folders": folders,
                                  **_report(bench, results, images, cuda, batches, heading, compiled)}
    path = work / "pipeline_speed.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nall figures: {path}")


if __name__ == "__main__":
    main()
