"""dalle's text-to-image on a Karlo or Kandinsky 2.2 folder, timed, in a process of its own: the diffusers reference
scripts' counterpart, driven by the same JOB.json (benchmarks/pipeline_speed.py starts it).

    python benchmarks/dalle_job.py JOB.json

JOB.json is benchmarks/karlo_reference.py's (for Kandinsky 2.2 benchmarks/kandinsky_reference.py's, with `prior` the
prior folder); the settings are in dalle's names already and are laid over the model's defaults. The model is loaded
through `dalle_cli.load` as a user's local folder, offline (in low-memory mode when `low_memory` is true, its
networks compiled by torch.compile when `compile` is: the warm-up call of each batch size then compiles), and
benchmarks/bench_timing.py's `run_job` times it exactly as it times diffusers: the same threads, warm-up, runs and
figures. `model.generate_tensors` seeds image i with `seeds[i]`; its [-1, 1] images are turned into diffusers'
output_type="np" pixels (×0.5 + 0.5 and the clamp in the model's dtype, then float32 [N, H, W, 3] in [0, 1]). For
Kandinsky 2.2, `$DALLE_CACHE` decides whether the zero-image embedding is computed (the image encoder loaded) on the
first warm-up or read from the cache.
"""

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the device machine has the repo but no install of dalle_cli
    sys.path.insert(0, str(ROOT))

import torch
from bench_timing import run_job
from gpu_sections import reference_pixels

import dalle_cli


def main(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    parts = {"prior": job["prior"]} if "prior" in job else None

    def load() -> Any:
        return dalle_cli.load(job["folder"], device=job["device"], dtype=job["dtype"], offline=True, parts=parts,
                              low_memory=job.get("low_memory", False), compile=job.get("compile", False))

    def sample(model: Any, prompts: list[str], seeds: list[int], settings: dict[str, Any]) -> torch.Tensor:
        chosen = model.defaults.updated(settings, f"{job_path} settings")
        return reference_pixels(model.generate_tensors(prompts, seeds, chosen))

    run_job(job, load, sample, {"dalle": dalle_cli.__version__, "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
