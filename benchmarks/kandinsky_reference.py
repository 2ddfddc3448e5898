"""diffusers' KandinskyV22CombinedPipeline on a Kandinsky 2.2 prior and decoder folder, timed, in a process of its own
(benchmarks/gpu_check.py starts it).

    python benchmarks/kandinsky_reference.py JOB.json

JOB.json is benchmarks/karlo_reference.py's, with `folder` the decoder folder and `prior` the prior folder, and
dalle's Kandinsky 2.2 settings; it writes the same images and result (benchmarks/bench_timing.py's
`run_reference_job`). The combined pipeline is built from its components, each loaded by its class from its folder,
as tests/test_kandinsky.py builds it: a hub prior and decoder are two repos, and `from_pretrained` of the combined
pipeline expects one.
"""

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from bench_timing import DTYPES, run_reference_job


def _settings(raw: dict[str, Any]) -> dict[str, Any]:
    """dalle's setting names as KandinskyV22CombinedPipeline's keyword arguments."""
    return {"prior_num_inference_steps": raw["prior_steps"], "num_inference_steps": raw["decoder_steps"],
            "prior_guidance_scale": raw["prior_guidance"], "guidance_scale": raw["decoder_guidance"],
            "width": raw["width"], "height": raw["height"], "negative_prompt": raw["negative_prompt"] or None}


def main(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    warnings.filterwarnings("ignore")  # the hand-written configs lack keys diffusers would warn about
    import diffusers
    import transformers
    from diffusers import (DDPMScheduler, KandinskyV22CombinedPipeline, PriorTransformer, UnCLIPScheduler,
                           UNet2DConditionModel, VQModel)
    from transformers import (CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizer,
                              CLIPVisionModelWithProjection)

    dtype, decoder, prior = DTYPES[job["dtype"]], Path(job["folder"]), Path(job["prior"])

    def load() -> KandinskyV22CombinedPipeline:
        return KandinskyV22CombinedPipeline(
            unet=UNet2DConditionModel.from_pretrained(decoder / "unet", torch_dtype=dtype),
            scheduler=DDPMScheduler.from_pretrained(decoder / "scheduler"),
            movq=VQModel.from_pretrained(decoder / "movq", torch_dtype=dtype),
            prior_prior=PriorTransformer.from_pretrained(prior / "prior", torch_dtype=dtype),
            prior_image_encoder=CLIPVisionModelWithProjection.from_pretrained(prior / "image_encoder", dtype=dtype),
            prior_text_encoder=CLIPTextModelWithProjection.from_pretrained(prior / "text_encoder", dtype=dtype),
            prior_tokenizer=CLIPTokenizer.from_pretrained(prior / "tokenizer"),
            prior_scheduler=UnCLIPScheduler.from_pretrained(prior / "scheduler"),
            prior_image_processor=CLIPImageProcessor.from_pretrained(prior / "image_processor"),
        ).to(job["device"])

    run_reference_job(job, load, _settings,
                      {"diffusers": diffusers.__version__, "transformers": transformers.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
