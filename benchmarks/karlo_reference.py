"""diffusers' UnCLIPPipeline on a Karlo folder, timed, in a process of its own (benchmarks/gpu_check.py starts it).

    python benchmarks/karlo_reference.py JOB.json

JOB.json names the model folder, device, dtype, prompts, seeds, batch size, CPU threads, the sampling settings
and a shorter warm-up setting, and two output paths: `images` gets the images as a float32 tensor [N, H, W, 3] in [0, 1]
(diffusers' output_type="np", saved with torch.save), `result` a JSON object {"load_s", "load_peak_bytes",
"resident_bytes", "sample_s", "sample_peak_bytes", "versions", ...}; with `batches` (a list of batch sizes) instead of
`batch`, one timed call of b images at each (benchmarks/pipeline_speed.py). Each image i gets its own
`torch.Generator("cpu").manual_seed(seeds[i])`, as dalle seeds it (benchmarks/bench_timing.py's `run_reference_job`
does all that). It runs in its own process so that its memory figures start from an empty GPU and its import of
diffusers never touches dalle's process; on the GPU machine, diffusers and transformers come as wheels on PYTHONPATH.
"""

import json
import sys
import warnings
from pathlib import Path

from bench_timing import DTYPES, run_reference_job


def _settings(raw: dict) -> dict:
    """dalle's setting names as UnCLIPPipeline's keyword arguments."""
    return {"prior_num_inference_steps": raw["prior_steps"], "decoder_num_inference_steps": raw["decoder_steps"],
            "super_res_num_inference_steps": raw["sr_steps"], "prior_guidance_scale": raw["prior_guidance"],
            "decoder_guidance_scale": raw["decoder_guidance"]}


def main(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    warnings.filterwarnings("ignore")  # diffusers deprecates the unCLIP pipelines; the warning is not news here
    import diffusers
    import transformers
    from diffusers import PriorTransformer, UnCLIPPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    dtype, folder = DTYPES[job["dtype"]], Path(job["folder"])
    # Karlo's model_index.json names the text projection's library "unclip", which diffusers 0.42 refuses to
    # resolve (even with the component handed in), so every component is loaded by its class, from its folder.
    networks = {"prior": PriorTransformer, "decoder": UNet2DConditionModel, "text_proj": UnCLIPTextProjModel,
                "super_res_first": UNet2DModel, "super_res_last": UNet2DModel}

    def load() -> UnCLIPPipeline:
        parts = {name: cls.from_pretrained(folder / name, torch_dtype=dtype) for name, cls in networks.items()}
        parts["text_encoder"] = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder", dtype=dtype)
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        for name in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler"):
            parts[name] = UnCLIPScheduler.from_pretrained(folder / name)
        return UnCLIPPipeline(**parts).to(job["device"])

    run_reference_job(job, load, _settings,
                      {"diffusers": diffusers.__version__, "transformers": transformers.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
