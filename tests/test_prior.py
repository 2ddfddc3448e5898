"""The prior, the text projection and the timestep embeddings against diffusers' modules."""

from pathlib import Path

import pytest
import torch
from diffusers import PriorTransformer as RefPrior
from diffusers.models.embeddings import TimestepEmbedding as RefTimestepEmbedding
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

from dalle_cli.checkpoint import load_weights
from dalle_cli.configs import from_config, read_json
from dalle_cli.errors import ConfigError
from dalle_cli.models.embeddings import ACTIVATIONS, TimestepEmbedding, timestep_embedding
from dalle_cli.models.prior import PriorConfig, PriorTransformer
from dalle_cli.models.text_proj import TextProjConfig, TextProjection
from reference import REFERENCE

CHECKPOINTS = REFERENCE
KARLO = CHECKPOINTS / "kakaobrain__karlo-v1-alpha"
TOL = 1e-5

TINY_PRIOR = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=24, num_embeddings=7)
PRIOR_VARIANTS = {
    "karlo-like": {},
    "kandinsky-like": dict(embedding_dim=40),
    "all-options": dict(norm_in_type="layer", embedding_proj_norm_type="layer", time_embed_dim=20,
                        embedding_proj_dim=12, clip_embed_dim=28, time_embed_act_fn="gelu"),
}


def randomize_(module: torch.nn.Module) -> None:
    """Give every parameter random values, so zero-initialised ones (positions, prd token, CLIP stats, LayerNorms)
    are exercised too. clip_std stays positive, as a real standard deviation."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "clip_std":
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)


def save_reference(module: torch.nn.Module, folder: Path) -> Path:
    module.save_pretrained(folder, safe_serialization=True)
    return folder


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# --- timestep embeddings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 8, 33, 320, 1280])
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_timestep_embedding_equals_reference(dim: int, flip: bool, shift: float) -> None:
    t = torch.tensor([0, 1, 3, 250, 999])
    t_frac = torch.tensor([0.5, 17.25, 998.9], dtype=torch.float64)
    for ts in (t, t_frac):
        ours = timestep_embedding(ts, dim, flip, shift)
        assert ours.dtype == torch.float32
        assert torch.equal(ours, get_timestep_embedding(ts, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift))


@pytest.mark.parametrize("act_fn", sorted(ACTIVATIONS) + ["SiLU"])
@pytest.mark.parametrize("out_dim", [None, 12])
def test_timestep_mlp_equals_reference(act_fn: str, out_dim: int | None) -> None:
    torch.manual_seed(0)
    ref = RefTimestepEmbedding(16, 20, act_fn=act_fn, out_dim=out_dim)
    ours = TimestepEmbedding(16, 20, act_fn=act_fn, out_dim=out_dim)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert max_diff(ours(x), ref(x)) <= TOL


def test_timestep_mlp_rejects_unknown_activation() -> None:
    with pytest.raises(ConfigError, match="act_fn"):
        TimestepEmbedding(4, 8, act_fn="tanh")


# --- prior -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(PRIOR_VARIANTS))
def prior_pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(reference, ours) for one tiny prior configuration, ours loaded from the reference's saved folder."""
    torch.manual_seed(1)
    ref = RefPrior(**{**TINY_PRIOR, **PRIOR_VARIANTS[request.param]})
    randomize_(ref)
    folder = save_reference(ref, tmp_path_factory.mktemp("prior"))
    config = from_config(PriorConfig, read_json(folder / "config.json"))
    ours = load_weights(lambda: PriorTransformer(config), folder, "prior", torch.float32, "cpu")
    return ref.eval(), ours


def prior_inputs(ref: RefPrior, batch: int, seed: int) -> dict[str, torch.Tensor]:
    cfg = ref.config
    g = torch.Generator().manual_seed(seed)
    proj_dim = cfg.embedding_proj_dim or cfg.embedding_dim
    mask = torch.rand(batch, cfg.num_embeddings, generator=g) < 0.6
    mask[:, 0] = True
    mask[0, 3:] = False  # right padding, as a tokenizer gives
    return dict(
        hidden_states=torch.randn(batch, cfg.embedding_dim, generator=g),
        proj_embedding=torch.randn(batch, proj_dim, generator=g),
        encoder_hidden_states=torch.randn(batch, cfg.num_embeddings, cfg.embedding_dim, generator=g),
        attention_mask=mask,
    )


def timestep_variants(batch: int) -> list[int | torch.Tensor]:
    return [0, 999, torch.tensor(37), torch.randint(0, 1000, (batch,))]


@pytest.mark.parametrize("batch,seed", [(1, 0), (3, 1), (5, 2)])
def test_prior_equals_reference(prior_pair, batch: int, seed: int) -> None:
    ref, ours = prior_pair
    inputs = prior_inputs(ref, batch, seed)
    for t in timestep_variants(batch):
        with torch.no_grad():
            expected = ref(timestep=t, **inputs).predicted_image_embedding
            got = ours(timestep=t, **inputs)
        assert max_diff(got, expected) <= TOL, t
        assert max_diff(ours.post_process_latents(got), ref.post_process_latents(expected)) <= TOL


def test_post_process_latents_equals_reference(prior_pair) -> None:
    ref, ours = prior_pair
    latents = torch.randn(4, ours.clip_std.shape[1])
    with torch.no_grad():
        assert max_diff(ours.post_process_latents(latents), ref.post_process_latents(latents)) <= TOL
        assert max_diff(ours.post_process_latents(latents), latents) > 0.1  # the statistics really apply


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prior_half_precision_follows_reference(tmp_path: Path, dtype: torch.dtype) -> None:
    """Half-precision runs (the timestep embedding cast, the attention bias built in the model dtype) track the
    reference's own half-precision run far more closely than the reference's half run tracks fp32."""
    torch.manual_seed(2)
    ref = RefPrior(**TINY_PRIOR)
    randomize_(ref)
    folder = save_reference(ref, tmp_path)
    config = from_config(PriorConfig, read_json(folder / "config.json"))
    ours = load_weights(lambda: PriorTransformer(config), folder, "prior", dtype, "cpu")
    ref_half = RefPrior.from_pretrained(folder, torch_dtype=dtype).eval()
    inputs = prior_inputs(ref, 3, 0)
    half_inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    t = torch.tensor([5, 500, 990])
    with torch.no_grad():
        got = ours(timestep=t, **half_inputs)
        expected = ref_half(timestep=t, **half_inputs).predicted_image_embedding
        full = ref.eval()(timestep=t, **inputs).predicted_image_embedding
    assert got.dtype == dtype
    assert max_diff(got, expected) <= 0.1 * max_diff(expected, full)


@pytest.mark.parametrize("key,value,message", [
    ("added_emb_type", None, "added_emb_type None"),
    ("encoder_hid_proj_type", None, "encoder_hid_proj_type None"),
    ("norm_in_type", "group", "norm_in_type 'group'"),
    ("embedding_proj_norm_type", "batch", "embedding_proj_norm_type 'batch'"),
    ("additional_embeddings", 3, "additional_embeddings 3"),
    ("time_embed_act_fn", "tanh", "act_fn 'tanh'"),
])
def test_prior_rejects_unsupported_config(key: str, value: object, message: str) -> None:
    config = from_config(PriorConfig, {**TINY_PRIOR, key: value})
    with pytest.raises(ConfigError, match=message):
        PriorTransformer(config)


# --- text projection -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_proj_pair(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(3)
    ref = UnCLIPTextProjModel(clip_extra_context_tokens=3, clip_embeddings_dim=24, time_embed_dim=32,
                              cross_attention_dim=20)
    randomize_(ref)
    folder = save_reference(ref, tmp_path_factory.mktemp("text_proj"))
    config = from_config(TextProjConfig, read_json(folder / "config.json"))
    ours = load_weights(lambda: TextProjection(config), folder, "text_proj", torch.float32, "cpu")
    return ref.eval(), ours


@pytest.mark.parametrize("cfg", [True, False])
@pytest.mark.parametrize("n,seed", [(1, 0), (3, 1)])
def test_text_proj_equals_reference(text_proj_pair, cfg: bool, n: int, seed: int) -> None:
    ref, ours = text_proj_pair
    g = torch.Generator().manual_seed(seed)
    b = 2 * n if cfg else n
    image = torch.randn(n, 24, generator=g)
    prompt = torch.randn(b, 24, generator=g)
    hidden = torch.randn(b, 9, 24, generator=g)
    with torch.no_grad():
        context, time = ours(image, prompt, hidden, cfg)
        ref_context, ref_time = ref(image_embeddings=image, prompt_embeds=prompt, text_encoder_hidden_states=hidden,
                                    do_classifier_free_guidance=cfg)
    assert context.shape == (b, 3 + 9, 20) and time.shape == (b, 32)
    assert max_diff(context, ref_context) <= TOL
    assert max_diff(time, ref_time) <= TOL


# --- real sizes ------------------------------------------------------------------------------------------------------


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("folder", [KARLO / "prior", CHECKPOINTS / "kandinsky-community__kandinsky-2-2-prior" / "prior"])
def test_real_prior_parameters_match(folder: Path) -> None:
    raw = read_json(folder / "config.json")
    with torch.device("meta"):
        ref = RefPrior.from_config(raw)
        ours = PriorTransformer(from_config(PriorConfig, raw))
    assert shapes(ours) == shapes(ref)  # the reference's causal mask is not persistent
    assert not list(ours.buffers())


@pytest.mark.parametrize("repo", ["kakaobrain__karlo-v1-alpha", "kakaobrain__karlo-v1-alpha-image-variations",
                                  "fusing__karlo-image-variations-diffusers"])
def test_real_text_proj_parameters_match(repo: str) -> None:
    raw = read_json(CHECKPOINTS / repo / "text_proj" / "config.json")
    with torch.device("meta"):
        ref = UnCLIPTextProjModel.from_config(raw)
        ours = TextProjection(from_config(TextProjConfig, raw))
    assert shapes(ours) == shapes(ref)
