"""Real-size parameter counts of every Karlo and Kandinsky 2.2 component: ours next to the reference's, built on the
meta device.

    python benchmarks/param_counts.py

Builds each network from the real hub config (tests/data/reference, copied from ../shared/reference/checkpoints)
with dalle's modules and with diffusers/transformers (the test extra), on the `meta` device, so it costs no memory.
Prints the parameter count of each and whether the parameter names and shapes are identical.

Kandinsky 2.2's reference configs are partly reconstructed (their NOTES.md): the keys that were not seen are filled
in here, as `KANDINSKY_ASSUMED` says, from the architecture values the notes give.
"""

import json
import sys
import warnings
from pathlib import Path

import torch

from dalle_cli.configs import from_config
from dalle_cli.models.clip_layers import tower_config
from dalle_cli.models.clip_text import CLIPTextConfig, CLIPTextEncoder
from dalle_cli.models.clip_vision import CLIPVisionConfig, CLIPVisionEncoder
from dalle_cli.models.movq import MoVQ, MoVQConfig
from dalle_cli.models.prior import PriorConfig, PriorTransformer
from dalle_cli.models.text_proj import TextProjConfig, TextProjection
from dalle_cli.models.unet import UNet, UNetConfig

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"
KARLO = REFERENCE / "kakaobrain__karlo-v1-alpha"
PRIOR = REFERENCE / "kandinsky-community__kandinsky-2-2-prior"
DECODER = REFERENCE / "kandinsky-community__kandinsky-2-2-decoder"
# Keys of Kandinsky 2.2's configs that were not seen, with the values NOTES.md gives (the OpenCLIP ViT-bigG/14 towers;
# the UNet's up blocks mirror its down blocks, as in Karlo's decoder and the Kandinsky 2.1 conversion config).
KANDINSKY_ASSUMED = {
    "text_encoder": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                     "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu",
                     "max_position_embeddings": 77, "vocab_size": 49408, "pad_token_id": 1, "bos_token_id": 0,
                     "eos_token_id": 2, "layer_norm_eps": 1e-05},
    "image_encoder": {"intermediate_size": 8192, "layer_norm_eps": 1e-05, "num_attention_heads": 16,
                      "num_channels": 3, "num_hidden_layers": 48, "patch_size": 14, "projection_dim": 1280},
    "unet": {"up_block_types": ["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"], "sample_size": 64},
}


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _reference_builders() -> dict:
    from diffusers import PriorTransformer as RefPrior, UNet2DConditionModel, UNet2DModel, VQModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPConfig, CLIPTextConfig as RefTextConfig, CLIPTextModelWithProjection
    from transformers import CLIPVisionConfig as RefVisionConfig, CLIPVisionModelWithProjection

    return {
        "text": lambda raw: CLIPTextModelWithProjection(RefTextConfig(**raw)),
        "vision": lambda raw: CLIPVisionModelWithProjection(
            CLIPConfig(**raw).vision_config if "vision_config" in raw else RefVisionConfig(**raw)
        ),
        "prior": RefPrior.from_config,
        "text_proj": UnCLIPTextProjModel.from_config,
        "UNet2DConditionModel": UNet2DConditionModel.from_config,
        "UNet2DModel": UNet2DModel.from_config,
        "VQModel": VQModel.from_config,
    }


def components(model: str = "karlo") -> list[tuple[str, dict, str, object]]:
    """(name, raw config, reference builder key, our builder) for every component of `model` ("karlo" or
    "kandinsky-2.2")."""
    if model == "kandinsky-2.2":
        return _kandinsky()
    clip = _read(REFERENCE / "openai__clip-vit-large-patch14" / "config.json")
    out = [
        ("text_encoder", _read(KARLO / "text_encoder" / "config.json"), "text",
         lambda raw: CLIPTextEncoder(from_config(CLIPTextConfig, raw))),
        ("prior", _read(KARLO / "prior" / "config.json"), "prior",
         lambda raw: PriorTransformer(from_config(PriorConfig, raw))),
        ("text_proj", _read(KARLO / "text_proj" / "config.json"), "text_proj",
         lambda raw: TextProjection(from_config(TextProjConfig, raw))),
    ]
    for name in ("decoder", "super_res_first", "super_res_last"):
        raw = _read(KARLO / name / "config.json")
        out.append((name, raw, raw["_class_name"], lambda raw: UNet(from_config(UNetConfig, raw))))
    out.append(("image_encoder (openai/clip-vit-large-patch14)", clip, "vision",
                lambda raw: CLIPVisionEncoder(from_config(CLIPVisionConfig, tower_config(raw, "vision_config")))))
    return out


def _kandinsky() -> list[tuple[str, dict, str, object]]:
    vision = {k: v for k, v in _read(PRIOR / "image_encoder" / "config.json").items() if v is not None}
    return [
        ("text_encoder", KANDINSKY_ASSUMED["text_encoder"], "text",
         lambda raw: CLIPTextEncoder(from_config(CLIPTextConfig, raw))),
        ("prior", _read(PRIOR / "prior" / "config.json"), "prior",
         lambda raw: PriorTransformer(from_config(PriorConfig, raw))),
        ("image_encoder", {**vision, **KANDINSKY_ASSUMED["image_encoder"]}, "vision",
         lambda raw: CLIPVisionEncoder(from_config(CLIPVisionConfig, raw))),
        ("unet", {**_read(DECODER / "unet" / "config.json"), **KANDINSKY_ASSUMED["unet"]}, "UNet2DConditionModel",
         lambda raw: UNet(from_config(UNetConfig, raw))),
        ("movq", _read(DECODER / "movq" / "config.json"), "VQModel",
         lambda raw: MoVQ(from_config(MoVQConfig, raw))),
    ]


def compare(name: str, raw: dict, reference: object, ours: object) -> tuple[int, int, bool]:
    """(our parameter count, the reference's, whether names and shapes are identical), built on the meta device."""
    with torch.device("meta"):
        mine, ref = ours(raw), reference(raw)
    mine_shapes = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
    return sum(p.numel() for p in mine.parameters()), sum(p.numel() for p in ref.parameters()), mine_shapes == ref_shapes


def main() -> int:
    warnings.filterwarnings("ignore")
    builders = _reference_builders()
    same_everywhere = True
    for model in ("karlo", "kandinsky-2.2"):
        print(f"{model:48} {'dalle':>15} {'reference':>15}  names+shapes")
        total = 0
        for name, raw, ref_key, ours in components(model):
            count, ref_count, same = compare(name, raw, builders[ref_key], ours)
            same_everywhere &= same
            total += count
            print(f"  {name:46} {count:>15,} {ref_count:>15,}  {'identical' if same else 'DIFFERENT'}")
        print(f"  {'total':46} {total:>15,}\n")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    sys.exit(main())
