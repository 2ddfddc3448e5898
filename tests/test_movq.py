"""MoVQ (Kandinsky 2.2's latent autoencoder) against diffusers' `VQModel`.

Toy `VQModel`s in MoVQ's layout (and one plain VQGAN) get seeded random weights, are saved with `save_pretrained`
and loaded through dalle's strict loader; `decode` and `encode` must then agree with diffusers'
`decode(latents, force_not_quantize=True)` and `encode(x).latents`. The real config is checked on the meta device:
the same parameter names and shapes as diffusers, and exactly the size of the hub's safetensors file.
"""

import dataclasses
import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from dalle_cli.checkpoint import load_weights
from dalle_cli.configs import from_config, read_json
from dalle_cli.errors import ConfigError
from dalle_cli.models.movq import MoVQ, MoVQConfig

diffusers = pytest.importorskip("diffusers")

REAL_CONFIG = Path(__file__).parent / "data/reference/kandinsky-community__kandinsky-2-2-decoder/movq/config.json"
REAL_PARAMETERS = 67_832_495  # diffusers' VQModel built from REAL_CONFIG
REAL_FILE_SIZE = 271_380_364  # bytes of movq/diffusion_pytorch_model.safetensors on the hub (see FILES.md there)

# Kandinsky's layout (4 levels, attention at the coarsest level on both sides, spatial norms) at toy widths.
# norm_num_groups 16 differs from SpatialNorm's fixed 32 groups, so mixing the two up shows.
SPATIAL = dict(
    down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
    up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 32, 64, 64], layers_per_block=2, latent_channels=4, vq_embed_dim=4,
    num_vq_embeddings=64, norm_num_groups=16, norm_type="spatial",
)
# The plain VQGAN: group norms, a codebook wider than the latents, no bottleneck attention, GELU residual blocks.
GROUP = dict(
    down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
    block_out_channels=[16, 32], layers_per_block=1, latent_channels=3, vq_embed_dim=5, num_vq_embeddings=32,
    norm_num_groups=8, norm_type="group", act_fn="gelu", mid_block_add_attention=False,
)
LATENT_SIZES = [(4, 4), (3, 5)]  # (h, w): one square, one not


def _reference(config: dict, seed: int):
    """A diffusers VQModel with seeded weights; every 1-D parameter (norm scales and shifts, biases) is moved off
    its initial value, so the norms' affine parameters matter."""
    torch.manual_seed(seed)
    model = diffusers.VQModel(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _load_ours(folder: Path) -> MoVQ:
    config = from_config(MoVQConfig, read_json(folder / "config.json"))
    return load_weights(lambda: MoVQ(config), folder, "movq", torch.float32, "cpu")


@pytest.fixture(scope="module", params=["spatial", "group"])
def pair(request, tmp_path_factory):
    """(diffusers VQModel, dalle MoVQ loaded from its save_pretrained folder) for each toy config."""
    config = SPATIAL if request.param == "spatial" else GROUP
    reference = _reference(config, seed=0)
    folder = tmp_path_factory.mktemp(f"movq-{request.param}")
    reference.save_pretrained(folder, safe_serialization=True)
    return reference, _load_ours(folder)


def _assert_informative(y: torch.Tensor) -> None:
    """Outputs worth comparing: finite, varied, and mostly in a sane range rather than blown up."""
    assert torch.isfinite(y).all()
    assert y.std() > 0.1
    assert (y.abs() < 2).float().mean() > 0.9
    assert y[0].std(dim=(-2, -1)).min() > 0.01  # every channel varies across the image


@pytest.mark.parametrize("size", LATENT_SIZES)
def test_decode_matches_diffusers(pair, size):
    reference, ours = pair
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, ours.config.embed_dim, *size, generator=g)
    with torch.no_grad():
        expected = reference.decode(latents, force_not_quantize=True).sample
        got = ours.decode(latents)
    assert got.shape == (2, 3, size[0] * ours.downscale, size[1] * ours.downscale)
    _assert_informative(expected)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size", LATENT_SIZES)
def test_encode_matches_diffusers(pair, size):
    reference, ours = pair
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, size[0] * ours.downscale, size[1] * ours.downscale, generator=g) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(images).latents
        got = ours.encode(images)
    assert got.shape == (2, ours.config.embed_dim, *size)
    _assert_informative(expected)
    assert (got - expected).abs().max().item() <= 1e-5


def test_decode_never_reads_the_codebook(pair):
    _, ours = pair
    latents = torch.randn(1, ours.config.embed_dim, 3, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = ours.decode(latents)
        saved = ours.quantize.embedding.weight.clone()
        ours.quantize.embedding.weight.fill_(float("nan"))
        try:
            after = ours.decode(latents)
        finally:
            ours.quantize.embedding.weight.copy_(saved)
    assert torch.equal(before, after)


def test_fp16_decode_stays_close_to_fp32(pair):
    """Not a speed test: fp16 on the CPU only has to run and stay near fp32 (the issue asks about fp16 safety)."""
    _, ours = pair
    latents = torch.randn(1, ours.config.embed_dim, 4, 4, generator=torch.Generator().manual_seed(4))
    half = MoVQ(ours.config).eval()
    half.load_state_dict(ours.state_dict())
    half = half.half()
    with torch.no_grad():
        full = ours.decode(latents)
        low = half.decode(latents.half()).float()
    assert torch.isfinite(low).all()
    assert (low - full).abs().max().item() < 0.05


def test_real_config_reads():
    c = from_config(MoVQConfig, read_json(REAL_CONFIG))
    assert (c.norm_type, c.embed_dim, c.latent_channels, c.num_vq_embeddings) == ("spatial", 4, 4, 16384)
    assert c.block_out_channels == (128, 256, 256, 512) and c.layers_per_block == 2


def test_defaults_are_diffusers_defaults():
    signature = inspect.signature(diffusers.VQModel.__init__).parameters
    for field in dataclasses.fields(MoVQConfig):
        assert field.name in signature, field.name
        assert field.default == signature[field.name].default, field.name


def _meta_models(raw: dict):
    with torch.device("meta"):
        return diffusers.VQModel.from_config(raw), MoVQ(from_config(MoVQConfig, raw))


def test_real_config_has_diffusers_parameter_names_and_shapes():
    reference, ours = _meta_models(read_json(REAL_CONFIG))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert got["quantize.embedding.weight"] == (16384, 4)
    assert sum(p.numel() for p in ours.parameters()) == REAL_PARAMETERS


def _safetensors_size(shapes: dict[str, tuple[int, ...]]) -> int:
    """The size of a float32 safetensors file holding these tensors, as `save_pretrained` writes it: an 8-byte header
    length, the JSON header (format metadata, then the tensors by name) padded with spaces to a multiple of 8, then
    the data in name order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(shapes):
        size = 4 * math.prod(shapes[name])
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    text = len(json.dumps(header, separators=(",", ":")))
    return 8 + text + (-text) % 8 + offset


def test_real_config_names_match_the_hub_file_size(tmp_path):
    """The hub's MoVQ weights are exactly as large as a file of our names and shapes would be: the names (unlike
    older diffusers' query/key/value/proj_attn, 40 bytes more) and the codebook are those the strict loader wants."""
    toy = _reference(SPATIAL, seed=5)
    toy.save_pretrained(tmp_path, safe_serialization=True)
    toy_shapes = {k: tuple(v.shape) for k, v in toy.state_dict().items()}
    assert _safetensors_size(toy_shapes) == (tmp_path / "diffusion_pytorch_model.safetensors").stat().st_size
    _, ours = _meta_models(read_json(REAL_CONFIG))
    assert _safetensors_size({k: tuple(v.shape) for k, v in ours.state_dict().items()}) == REAL_FILE_SIZE


@pytest.mark.parametrize("override, key", [
    ({"norm_type": "layer"}, "norm_type"),
    ({"down_block_types": ["DownBlock2D"] * 4}, "down_block_types"),
    ({"up_block_types": ["UpDecoderBlock2D"] * 3 + ["AttnUpBlock2D"]}, "up_block_types"),
    ({"act_fn": "tanh"}, "act_fn"),
    ({"lookup_from_codebook": True}, "lookup_from_codebook"),
    ({"layers_per_block": [2, 2, 2, 2]}, "layers_per_block"),
    ({"block_out_channels": [128, 256, 256, 512, 512]}, "same length"),
    ({"block_out_channels": [48, 96, 96, 192], "norm_num_groups": 16}, "multiples of 32"),  # SpatialNorm's groups
    ({"vq_embed_dim": 8}, "vq_embed_dim"),
])
def test_unsupported_configs_raise_config_error(override, key):
    raw = {**read_json(REAL_CONFIG), **override}
    with torch.device("meta"), pytest.raises(ConfigError, match=key):
        MoVQ(from_config(MoVQConfig, raw))
