"""Kandinsky 2.2's decoder UNet (image-embedding conditioning) against diffusers' UNet2DConditionModel."""

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from dalle_cli.checkpoint import load_weights
from dalle_cli.configs import from_config, read_json
from dalle_cli.errors import ConfigError, UsageError
from dalle_cli.models.image_conditioning import IMAGE_TOKENS
from dalle_cli.models.unet import UNet, UNetConfig
from reference import REFERENCE

TOL = 1e-5
EMBED = 24  # the toy image-embedding width (1280 in the real decoder)
KANDINSKY_CONFIG = REFERENCE / "kandinsky-community__kandinsky-2-2-decoder" / "unet" / "config.json"
# Keys missing from the partial reference copy of the real config, assumed (unverified) from Karlo's decoder, whose
# block layout Kandinsky 2.2 shares, and the Kandinsky 2.1 conversion config: see NOTES.md next to the config.
ASSUMED_KEYS = {"up_block_types": ["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"], "sample_size": 64}

# Kandinsky 2.2's layout at toy widths: 4 latent channels in, 8 out (learned variance), AdaGN, image conditioning.
TOY = dict(
    sample_size=16, in_channels=4, out_channels=8, layers_per_block=2, block_out_channels=(32, 64, 64, 96),
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    norm_num_groups=16, attention_head_dim=8, cross_attention_dim=32, encoder_hid_dim=EMBED,
    encoder_hid_dim_type="image_proj", addition_embed_type="image", addition_embed_type_num_heads=64,
    resnet_time_scale_shift="scale_shift", class_embed_type=None,
)
VARIANTS = {
    "kandinsky-like": {},
    "context-only": dict(addition_embed_type=None),  # image tokens without the additive time embedding
    "with-options": dict(class_embed_type="identity", time_embedding_dim=48, time_embedding_act_fn="silu",
                         layers_per_block=(1, 2, 1, 3), resnet_time_scale_shift="default"),
}
# (batch size, timestep): an int, a 0-d tensor, one timestep per sample.
CASES = [(1, 999), (2, torch.tensor(0)), (3, torch.tensor([1, 500, 990]))]


def randomize_norms_(module: torch.nn.Module) -> None:
    """GroupNorms and LayerNorms start as the identity affine map; randomize them so they are exercised too."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)


def build_pair(kwargs: dict, folder: Path, seed: int = 0) -> tuple[UNet2DConditionModel, UNet]:
    """A seeded random reference UNet, saved as a hub folder, and ours loaded from that folder."""
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(**kwargs).eval()
    randomize_norms_(ref)
    ref.save_pretrained(folder, safe_serialization=True)
    config = from_config(UNetConfig, read_json(folder / "config.json"))
    return ref, load_weights(lambda: UNet(config), folder, "unet", torch.float32, "cpu")


def inputs(batch: int, config: UNetConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = dict(sample=torch.randn(batch, config.in_channels, 16, 16, generator=g),
               image_embeds=torch.randn(batch, EMBED, generator=g))
    if config.class_embed_type == "identity":
        out["class_labels"] = torch.randn(batch, config.time_embedding_dim, generator=g)
    return out


def reference_output(ref: UNet2DConditionModel, t: int | torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """diffusers' call, as KandinskyV22Pipeline makes it: no encoder_hidden_states, the embeddings as added_cond."""
    return ref(x["sample"], t, encoder_hidden_states=None, class_labels=x.get("class_labels"),
               added_cond_kwargs={"image_embeds": x["image_embeds"]}).sample


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kandinsky_unet_equals_reference(variant: str, tmp_path: Path) -> None:
    ref, ours = build_pair({**TOY, **VARIANTS[variant]}, tmp_path)
    assert ours.config.context_from_image and ours.config.image_conditional
    for seed, (batch, t) in enumerate(CASES):
        x = inputs(batch, ours.config, seed)
        with torch.no_grad():
            expected = reference_output(ref, t, x)
            got = ours(timestep=t, **x)
        assert expected.shape == (batch, 8, 16, 16)
        assert expected.std() > 0.05  # random weights give a non-trivial output
        assert max_diff(got, expected) <= TOL


def test_image_embeds_condition_both_paths(tmp_path: Path) -> None:
    """Other image embeddings change the output, through the time embedding alone and through the context alone."""
    ref, ours = build_pair(TOY, tmp_path, seed=1)
    x = inputs(2, ours.config, seed=5)
    other = torch.randn_like(x["image_embeds"])
    with torch.no_grad():
        base = ours(timestep=300, **x)
        assert max_diff(ours(timestep=300, **{**x, "image_embeds": other}), base) > 1e-2
        context = ours.encoder_hid_proj(x["image_embeds"])  # [B, IMAGE_TOKENS, 32]
        assert context.shape == (2, IMAGE_TOKENS, 32)
        ours.encoder_hid_proj.image_embeds.weight.zero_()  # the context no longer depends on the embedding
        ours.encoder_hid_proj.image_embeds.bias.zero_()
        ref.encoder_hid_proj.image_embeds.weight.zero_()
        ref.encoder_hid_proj.image_embeds.bias.zero_()
        time_only = ours(timestep=300, **x)
        assert max_diff(time_only, reference_output(ref, 300, x)) <= TOL
        assert max_diff(ours(timestep=300, **{**x, "image_embeds": other}), time_only) > 1e-2


def real_config() -> dict:
    return {**read_json(KANDINSKY_CONFIG), **ASSUMED_KEYS}


def test_real_config_builds_the_reference_parameters(capfd: pytest.CaptureFixture[str]) -> None:
    raw = real_config()
    with torch.device("meta"):
        ref = UNet2DConditionModel.from_config(raw)
        ours = UNet(from_config(UNetConfig, raw))
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert shapes["encoder_hid_proj.image_embeds.weight"] == (IMAGE_TOKENS * 768, 1280)
    assert shapes["add_embedding.image_proj.weight"] == (4 * 384, 1280)
    assert capfd.readouterr() == ("", "")


def test_kandinsky_usage_errors() -> None:
    ours = UNet(from_config(UNetConfig, TOY))
    x = inputs(1, ours.config, seed=0)
    with pytest.raises(UsageError, match="image_embeds are required"):
        ours(x["sample"], 1)
    with pytest.raises(UsageError, match="encoder_hidden_states are not used"):
        ours(x["sample"], 1, encoder_hidden_states=torch.zeros(1, 4, 32), image_embeds=x["image_embeds"])
    with pytest.raises(UsageError, match="class_labels are not used"):
        ours(timestep=1, class_labels=torch.zeros(1, 128), **x)


@pytest.mark.parametrize("changes, message", [
    ({"addition_embed_type": "text_time"}, "unsupported addition_embed_type 'text_time'"),
    ({"addition_embed_type": "text"}, "unsupported addition_embed_type 'text'"),
    ({"addition_embed_type": "image_hint"}, "unsupported addition_embed_type 'image_hint'"),
    ({"encoder_hid_dim_type": "text_proj"}, "unsupported encoder_hid_dim_type 'text_proj'"),
    ({"encoder_hid_dim_type": "text_image_proj"}, "unsupported encoder_hid_dim_type 'text_image_proj'"),
    # diffusers reads an encoder_hid_dim without a type as "text_proj"
    ({"encoder_hid_dim_type": None, "addition_embed_type": None}, "unsupported encoder_hid_dim_type 'text_proj'"),
    ({"encoder_hid_dim": None}, "need encoder_hid_dim"),
    ({"cross_attention_dim": [32, 32, 32, 32]}, "needs one cross_attention_dim for all levels"),
    ({"only_cross_attention": True}, "unsupported only_cross_attention True"),
    ({"only_cross_attention": [False, True, False, False]}, "unsupported only_cross_attention True"),
    ({"mid_block_only_cross_attention": True}, "unsupported mid_block_only_cross_attention True"),
    ({"cross_attention_norm": "group_norm"}, "unsupported cross_attention_norm 'group_norm'"),
    ({"num_class_embeds": 10}, "unsupported num_class_embeds 10"),
    ({"time_cond_proj_dim": 16}, "unsupported time_cond_proj_dim 16"),
    ({"class_embeddings_concat": True}, "unsupported class_embeddings_concat True"),
])
def test_unsupported_image_options_raise(changes: dict, message: str) -> None:
    config = from_config(UNetConfig, {**TOY, **changes})
    with torch.device("meta"), pytest.raises(ConfigError, match=f"^decoder UNet: .*{message}"):
        UNet(config)


def test_image_options_on_a_super_res_unet_raise() -> None:
    """UNet2DModel has no image conditioning: a config asking for it is not one dalle understands."""
    raw = {"block_out_channels": [32, 32, 64, 64], "down_block_types": ["ResnetDownsampleBlock2D"] * 4,
           "up_block_types": ["ResnetUpsampleBlock2D"] * 4, "add_attention": False, "addition_embed_type": "image"}
    with pytest.raises(ConfigError, match="super-resolution UNet: unsupported addition_embed_type 'image'"):
        UNet(from_config(UNetConfig, raw))
