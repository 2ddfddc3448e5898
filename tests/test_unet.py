"""The decoder and super-resolution UNets against diffusers' UNet2DConditionModel and UNet2DModel."""

import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNet2DModel

from dalle_cli.checkpoint import load_weights
from dalle_cli.configs import from_config, read_json
from dalle_cli.errors import ConfigError, UsageError
from dalle_cli.models.unet import CLASS_DEFAULTS, UNet, UNetConfig
from reference import KARLO
TOL = 1e-5
EXTRA_TOKENS = 4  # the text projection's extra context tokens, in front of the text tokens
TEXT_TOKENS = 7  # S = 11 context tokens: not the token count of any attention level (the reference mishandles that)

DECODER_BLOCKS = dict(
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
)
DECODER = dict(
    sample_size=16, in_channels=3, out_channels=6, layers_per_block=2, block_out_channels=(32, 64, 64, 96),
    norm_num_groups=16, attention_head_dim=8, cross_attention_dim=32, class_embed_type="identity",
    resnet_time_scale_shift="scale_shift", **DECODER_BLOCKS,
)
DECODER_VARIANTS = {
    "karlo-like": {},
    "three-levels": dict(block_out_channels=(16, 32, 48), layers_per_block=1, norm_num_groups=8,
                         down_block_types=DECODER_BLOCKS["down_block_types"][:3],
                         up_block_types=DECODER_BLOCKS["up_block_types"][1:]),
    "all-options": dict(
        layers_per_block=(1, 2, 1, 2), attention_head_dim=(8, 16, 32, 16), cross_attention_dim=(32,) * 4,
        resnet_time_scale_shift="default", class_embed_type=None, act_fn="gelu", flip_sin_to_cos=False,
        freq_shift=1, center_input_sample=True, mid_block_scale_factor=1.5, resnet_out_scale_factor=1.25,
        resnet_skip_time_act=True, time_embedding_dim=40, time_embedding_act_fn="mish", conv_in_kernel=5,
        conv_out_kernel=1, norm_eps=1e-3,
    ),
}
SUPER_RES = dict(
    sample_size=16, in_channels=6, out_channels=3, layers_per_block=2, block_out_channels=(16, 32, 32, 48),
    down_block_types=("ResnetDownsampleBlock2D",) * 4, up_block_types=("ResnetUpsampleBlock2D",) * 4,
    add_attention=False, norm_num_groups=8,
)
SUPER_RES_VARIANTS = {
    "karlo-like": {},
    "one-layer-16-groups": dict(layers_per_block=1, block_out_channels=(32, 32, 64, 64), norm_num_groups=16),
    "all-options": dict(act_fn="relu", resnet_time_scale_shift="scale_shift", class_embed_type="identity",
                        time_embedding_dim=24, mid_block_scale_factor=2.0, center_input_sample=True, sample_size=None),
}


def randomize_norms_(module: torch.nn.Module) -> None:
    """GroupNorms start as the identity affine map; give them random scales and shifts so those are exercised too.
    (The convolutions and linear layers, conv_out included, already get random initial weights.)"""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)


def build_pair(ref_cls: type, kwargs: dict, folder: Path, seed: int = 0) -> tuple[torch.nn.Module, UNet]:
    """A seeded random reference UNet, saved as a hub folder, and ours loaded from that folder."""
    torch.manual_seed(seed)
    ref = ref_cls(**kwargs).eval()
    randomize_norms_(ref)
    ref.save_pretrained(folder, safe_serialization=True)
    config = from_config(UNetConfig, read_json(folder / "config.json"))
    return ref, load_weights(lambda: UNet(config), folder, "unet", torch.float32, "cpu")


def decoder_inputs(batch: int, config: UNetConfig, seed: int) -> dict[str, torch.Tensor]:
    """Noisy images, context tokens, additive time embeddings and a context mask padded as the unCLIP pipeline does
    (`decoder_text_mask`: the extra tokens are always attended, the text tokens have padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, TEXT_TOKENS + 1, (batch,), generator=g)
    lengths[0] = 2  # at least one row with padding
    text_mask = torch.arange(TEXT_TOKENS)[None, :] < lengths[:, None]  # [B, L]
    time_dim = config.time_embedding_dim or 4 * config.block_out_channels[0]
    inputs = dict(
        sample=torch.randn(batch, config.in_channels, 16, 16, generator=g),
        encoder_hidden_states=torch.randn(batch, EXTRA_TOKENS + TEXT_TOKENS, 32, generator=g),
        attention_mask=F.pad(text_mask, (EXTRA_TOKENS, 0), value=True),
    )
    if config.class_embed_type == "identity":
        inputs["class_labels"] = torch.randn(batch, time_dim, generator=g)
    return inputs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# (batch size, timestep): an int, a 0-d tensor, a one-element tensor and one timestep per sample.
CASES = [(1, 999), (1, torch.tensor(0)), (3, torch.tensor([421])), (3, torch.tensor([1, 500, 990]))]


# --- the decoder ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(DECODER_VARIANTS))
def test_decoder_equals_reference(variant: str, tmp_path: Path) -> None:
    ref, ours = build_pair(UNet2DConditionModel, {**DECODER, **DECODER_VARIANTS[variant]}, tmp_path)
    assert ours.config.conditional
    for seed, (batch, t) in enumerate(CASES):
        inputs = decoder_inputs(batch, ours.config, seed)
        with torch.no_grad():
            expected = ref(timestep=t, **inputs).sample
            got = ours(timestep=t, **inputs)
        assert expected.std() > 0.05  # random weights give a non-trivial output
        assert max_diff(got, expected) <= TOL


def test_decoder_mask_is_honoured(tmp_path: Path) -> None:
    """The padding in the mask changes the output (so the comparisons above exercise it), without a mask too."""
    ref, ours = build_pair(UNet2DConditionModel, DECODER, tmp_path, seed=1)
    inputs = decoder_inputs(2, ours.config, seed=7)
    unmasked = {**inputs, "attention_mask": None}
    with torch.no_grad():
        masked_out, unmasked_out = ours(timestep=500, **inputs), ours(timestep=500, **unmasked)
        assert max_diff(unmasked_out, ref(timestep=500, **unmasked).sample) <= TOL
    assert max_diff(masked_out, unmasked_out) > 1e-3


# --- the super-resolution UNets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(SUPER_RES_VARIANTS))
def test_super_res_equals_reference(variant: str, tmp_path: Path) -> None:
    ref, ours = build_pair(UNet2DModel, {**SUPER_RES, **SUPER_RES_VARIANTS[variant]}, tmp_path)
    assert not ours.config.conditional
    time_dim = ours.config.time_embedding_dim or 4 * ours.config.block_out_channels[0]
    for seed, (batch, t) in enumerate(CASES):
        g = torch.Generator().manual_seed(seed)
        sample = torch.randn(batch, 6, 16, 16, generator=g)
        labels = torch.randn(batch, time_dim, generator=g) if ours.config.class_embed_type else None
        with torch.no_grad():
            expected = ref(sample, t, class_labels=labels).sample
            got = ours(sample, t, class_labels=labels)
        assert expected.std() > 0.05
        assert max_diff(got, expected) <= TOL


# --- half precision --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference(dtype: torch.dtype, tmp_path: Path) -> None:
    """In half precision ours stays as close to the fp32 result as the reference does in that precision."""
    ref, ours = build_pair(UNet2DConditionModel, DECODER, tmp_path)
    inputs = decoder_inputs(2, ours.config, seed=3)
    with torch.no_grad():
        exact = ref(timestep=250, **inputs).sample
        half_inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        ref_half = ref.to(dtype)(timestep=250, **half_inputs).sample
        ours_half = ours.to(dtype)(timestep=250, **half_inputs)
    assert ours_half.dtype == dtype
    assert max_diff(ours_half, exact) <= 2 * max_diff(ref_half, exact) + 1e-3


# --- configs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["decoder", "super_res_first", "super_res_last"])
def test_real_karlo_configs_build_the_reference_parameters(component: str) -> None:
    raw = read_json(KARLO / component / "config.json")
    ref_cls = UNet2DConditionModel if raw["_class_name"] == "UNet2DConditionModel" else UNet2DModel
    with torch.device("meta"):
        ref = ref_cls.from_config(raw)
        ours = UNet(from_config(UNetConfig, raw))
    assert ours.config.conditional == (ref_cls is UNet2DConditionModel)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("ref_cls", [UNet2DConditionModel, UNet2DModel])
def test_defaults_equal_the_reference_class_defaults(ref_cls: type) -> None:
    """A key missing from a config takes the default of the class the config describes."""
    conditional = ref_cls is UNet2DConditionModel
    config = from_config(UNetConfig, {"cross_attention_dim": 1280} if conditional else {})
    for name, param in inspect.signature(ref_cls.__init__).parameters.items():
        if hasattr(config, name) and name != "cross_attention_dim":
            default = tuple(param.default) if isinstance(param.default, list) else param.default
            assert getattr(config, name) == default, name
    assert set(CLASS_DEFAULTS) <= set(inspect.signature(ref_cls.__init__).parameters)


def _config_with(**changes: object) -> UNetConfig:
    return from_config(UNetConfig, {**json.loads(json.dumps(DECODER)), **changes})


@pytest.mark.parametrize("key, value, message", [
    ("down_block_types", ["ResnetDownsampleBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
     "decoder UNet: unsupported down_block_types 'CrossAttnDownBlock2D'"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn", "unsupported mid_block_type 'UNetMidBlock2DCrossAttn'"),
    ("up_block_types", ["AttnUpBlock2D"] * 4, "unsupported up_block_types 'AttnUpBlock2D'"),
    ("time_embedding_type", "fourier", "unsupported time_embedding_type 'fourier'"),
    ("class_embed_type", "timestep", "unsupported class_embed_type 'timestep'"),
    ("act_fn", "tanh", "unsupported act_fn 'tanh'"),
    ("resnet_time_scale_shift", "spatial", "unsupported resnet_time_scale_shift 'spatial'"),
    ("timestep_post_act", "silu", "unsupported timestep_post_act 'silu'"),
    ("layers_per_block", [1, 2], "layers_per_block must give one value per level"),
    ("up_block_types", ["SimpleCrossAttnUpBlock2D"] * 3, "must have the same length"),
    ("norm_num_groups", 24, "must be multiples of norm_num_groups 24"),
    ("attention_head_dim", 12, "attention width 64 is not a multiple of attention_head_dim 12"),
])
def test_unsupported_decoder_config_raises(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UNet(_config_with(**{key: value}))


def test_unsupported_super_res_configs_raise() -> None:
    with pytest.raises(ConfigError, match="super-resolution UNet: unsupported add_attention True"):
        UNet(from_config(UNetConfig, {**SUPER_RES, "add_attention": True}))
    with pytest.raises(ConfigError, match="unsupported down_block_types 'SimpleCrossAttnDownBlock2D'"):
        UNet(from_config(UNetConfig, {**SUPER_RES, "down_block_types": DECODER_BLOCKS["down_block_types"]}))
    with pytest.raises(ConfigError, match="unsupported mid_block_type 'UNetMidBlock2DSimpleCrossAttn'"):
        UNet(from_config(UNetConfig, {**SUPER_RES, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}))


def test_usage_errors() -> None:
    ours = UNet(from_config(UNetConfig, DECODER))
    inputs = decoder_inputs(1, ours.config, seed=0)
    with pytest.raises(UsageError, match="not a multiple of 8"):
        ours(**{**inputs, "sample": inputs["sample"][..., :12]}, timestep=1)
    with pytest.raises(UsageError, match="encoder_hidden_states are required"):
        ours(**{**inputs, "encoder_hidden_states": None}, timestep=1)
    with pytest.raises(UsageError, match="class_labels are required"):
        ours(**{**inputs, "class_labels": None}, timestep=1)


def test_a_channels_last_unet_gives_the_contiguous_ones_output_to_float_rounding() -> None:
    """On the CPU the families load UNets channels-last (`devices.conv_layout`): the input follows the weights'
    layout, the output comes back contiguous, and the values are the default layout's to float rounding."""
    from dalle_cli.checkpoint import load_component
    from dalle_cli.devices import conv_layout

    folder = Path(__file__).resolve().parent.parent / "weights" / "shapes"
    assert conv_layout(torch.device("cpu")) == torch.channels_last
    plain = load_component(folder, "super_res_first", UNetConfig, UNet, torch.float32, "cpu")
    fast = load_component(folder, "super_res_first", UNetConfig, UNet, torch.float32, "cpu",
                          memory_format=torch.channels_last)
    assert fast.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, plain.config.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = plain(x, 300), fast(x, 300)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
