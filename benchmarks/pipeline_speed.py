"""Time and memory of dalle's text-to-image pipeline next to diffusers' UnCLIPPipeline on the same weights.

    python benchmarks/pipeline_speed.py [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--steps 25 25 7]

The model is Karlo-shaped at Karlo's resolutions (64 px decoder, 256 px output) and a fifth of its widths,
with random weights (tests/tiny_karlo.py's SMALL), so it runs on a CPU. Both pipelines run the same prompts, seeds
and steps on the same weights; each is run once to warm up, then timed. On CUDA the peak allocated memory is
reported too; on the CPU, the process's peak resident memory after each run.
Prints one line per implementation and the max |Δ| between their images.
"""

import argparse
import gc
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tiny_karlo import SMALL, build_reference, save_reference  # noqa: E402  (the tests' checkpoint builder)

from dalle_cli.devices import DTYPES  # noqa: E402
from dalle_cli.api import ModelInfo
from dalle_cli.families.unclip.settings import UnCLIPSettings as Settings  # noqa: E402
from dalle_cli.families.unclip.components import load_components  # noqa: E402
from dalle_cli.families.unclip.pipeline import UnCLIP  # noqa: E402

PROMPTS = ["an astronaut riding a horse", "a bowl of soup that is also a portal"]


def _timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def _memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB on the GPU"
    return f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, nargs=3, default=[25, 25, 7], metavar=("PRIOR", "DECODER", "SR"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    settings = Settings(*args.steps)
    seeds = list(range(len(PROMPTS)))

    with tempfile.TemporaryDirectory() as tmp:
        built = build_reference(seed=0, prediction="epsilon", w=SMALL)
        folder = save_reference(built, Path(tmp) / "model")
        reference = built[0].to(device, dtype)
        del built
        reference.set_progress_bar_config(disable=True)

        def run_reference():
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            return reference(prompt=PROMPTS, generator=generators, prior_num_inference_steps=settings.prior_steps,
                             decoder_num_inference_steps=settings.decoder_steps,
                             super_res_num_inference_steps=settings.sr_steps, output_type="np").images

        run_reference()
        ref_seconds, ref_images = _timed(run_reference, device)
        ref_memory = _memory(device)
        del reference
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

        model = UnCLIP(load_components(folder, dtype, device), ModelInfo("bench"), settings, device, dtype)
        model.generate_tensors(PROMPTS, seeds)
        seconds, images = _timed(lambda: model.generate_tensors(PROMPTS, seeds), device)
        memory = _memory(device)

    ours = (images.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()  # the reference's [B, H, W, 3] in [0, 1]
    delta = (ours - torch.from_numpy(ref_images)).abs().max().item()
    print(f"Karlo-shaped model at a fifth of its width, {len(PROMPTS)} images, steps {args.steps}, {device.type} {args.dtype}")
    print(f"  diffusers UnCLIPPipeline: {ref_seconds:8.2f} s   {ref_memory}")
    print(f"  dalle:                    {seconds:8.2f} s   {memory}")
    print(f"  max |Δ| between images: {delta:.2e}")


if __name__ == "__main__":
    main()
