"""Real-size parameter counts of every Karlo component: ours next to the reference's, built on the meta device.

    python benchmarks/param_counts.py

Builds each network from the real hub config (tests/data/reference, copied from ../shared/reference/checkpoints)
with dalle's modules and with diffusers/transformers (the test extra), on the `meta` device, so it costs no memory.
Prints the parameter count of each and whether the parameter names and shapes are identical.
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
from dalle_cli.models.prior import PriorConfig, PriorTransformer
from dalle_cli.models.text_proj import TextProjConfig, TextProjection
from dalle_cli.models.unet import UNet, UNetConfig

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"
KARLO = REFERENCE / "kakaobrain__karlo-v1-alpha"


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _reference_builders() -> dict:
    from diffusers import PriorTransformer as RefPrior, UNet2DConditionModel, UNet2DModel
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
    }


def components() -> list[tuple[str, dict, str, object]]:
    """(name, raw config, reference builder key, our builder) for every Karlo component."""
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


def main() -> int:
    warnings.filterwarnings("ignore")
    builders = _reference_builders()
    print(f"{'component':48} {'dalle':>15} {'reference':>15}  names+shapes")
    total = 0
    same_everywhere = True
    for name, raw, ref_key, ours in components():
        with torch.device("meta"):
            mine = ours(raw)
            ref = builders[ref_key](raw)
        mine_shapes = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
        ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
        count = sum(p.numel() for p in mine.parameters())
        ref_count = sum(p.numel() for p in ref.parameters())
        same = mine_shapes == ref_shapes
        same_everywhere &= same
        total += count
        print(f"{name:48} {count:>15,} {ref_count:>15,}  {'identical' if same else 'DIFFERENT'}")
    print(f"{'total':48} {total:>15,}")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    sys.exit(main())
