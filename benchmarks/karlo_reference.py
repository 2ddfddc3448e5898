"""diffusers' UnCLIPPipeline on a Karlo folder, timed, in a process of its own (benchmarks/gpu_check.py starts it).

    python benchmarks/karlo_reference.py JOB.json

JOB.json names the model folder, device, dtype, prompts, seeds, batch size, CPU threads, the sampling settings
and a shorter warm-up setting, and two output paths: `images` gets the images as a float32 tensor [N, H, W, 3] in [0, 1]
(diffusers' output_type="np", saved with torch.save), `result` a JSON object {"load_s", "load_peak_bytes",
"resident_bytes", "sample_s", "sample_peak_bytes", "versions"}. Each image i gets its own
`torch.Generator("cpu").manual_seed(seeds[i])`, as dalle seeds it. It runs in its own process so that its memory
figures start from an empty GPU and its import of diffusers never touches dalle's process; on the GPU machine,
diffusers and transformers come as wheels on PYTHONPATH.
"""

import json
import sys
import warnings
from pathlib import Path

import torch
from bench_timing import allocated, measure

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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

    device, dtype, folder = torch.device(job["device"]), DTYPES[job["dtype"]], Path(job["folder"])
    torch.set_num_threads(job["threads"])  # as many CPU threads as dalle had, for a fair CPU timing
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
        return UnCLIPPipeline(**parts).to(device)

    loaded = measure(load, device)
    pipe = loaded.value
    pipe.set_progress_bar_config(disable=True)
    resident = allocated(device)
    prompts, seeds, batch = job["prompts"], job["seeds"], job["batch"]

    def run(settings: dict) -> torch.Tensor:
        out = []
        for i in range(0, len(prompts), batch):
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[i:i + batch]]
            out.append(torch.from_numpy(pipe(prompt=prompts[i:i + batch], generator=generators, output_type="np",
                                              **settings).images))
        return torch.cat(out)

    with torch.inference_mode():
        run(_settings(job["warmup"]))
        sampled = measure(lambda: run(_settings(job["settings"])), device)
    torch.save(sampled.value, job["images"])
    result = {"load_s": loaded.seconds, "load_peak_bytes": loaded.peak_bytes, "resident_bytes": resident,
              "sample_s": sampled.seconds, "sample_peak_bytes": sampled.peak_bytes,
              "versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__}}
    Path(job["result"]).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
