"""The text-side stages of the `shapes` recipe: the tokenizer, CLIP, and the diffusion prior.

1. A byte-level BPE vocabulary learned from sampled captions (Sennrich et al. 2016), in CLIP's file format.
2. CLIP's two towers trained from scratch with the symmetric contrastive loss and a learned temperature (Radford et
   al. 2021, Fig. 3), on fresh scenes, half of every batch counterfactual twins of the other half
   (`sample_contrast_batch`).
3. The prior (Ramesh et al. 2022, §2.2) on the frozen towers: it denoises the normalised CLIP image embedding and
   predicts it directly (x_0, "sample" prediction) from the text embedding and token states; 15% of the captions
   are replaced by the empty prompt so that classifier-free guidance has an unconditional model.
"""

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dalle_cli.configs import from_config
from dalle_cli.models.clip_text import CLIPTextConfig, CLIPTextEncoder
from dalle_cli.models.clip_vision import CLIPVisionConfig, CLIPVisionEncoder
from dalle_cli.models.prior import PriorConfig, PriorTransformer
from dalle_cli.shapes.world import sample_scene
from dalle_cli.tokenizer import Tokenizer

from .bpe import learn_bpe, save_tokenizer_files
from .train_common import EMA, ForwardProcess, Optimizer, StageBudget, init_transformer, run_stage
from .train_data import clip_features, clip_pixels, downsample, sample_batch, sample_contrast_batch, tokenize
from .train_export import MAX_LENGTH, VOCAB_SIZE, image_encoder_config, prior_config, text_encoder_config

CORPUS_SIZE = 20000
CLIP_BATCH = 128
PRIOR_BATCH = 128
PRIOR_UNCOND = 0.15  # fraction of captions replaced by "" for the prior's guidance
STATS_IMAGES = 2048  # images whose CLIP embeddings give the prior's clip_mean / clip_std


def learn_tokenizer(rng: random.Random, folder: Path) -> Tokenizer:
    """Learn the BPE vocabulary on CORPUS_SIZE sampled captions, write the tokenizer files to `folder` (Karlo's
    layout, "!" as the pad token) and load them back."""
    corpus = [sample_scene(rng, kind="mix")[0] for _ in range(CORPUS_SIZE)]
    vocab, merges = learn_bpe(corpus, VOCAB_SIZE)
    save_tokenizer_files(folder, vocab, merges, pad_token="!", model_max_length=MAX_LENGTH)
    return Tokenizer.from_folder(folder)


def init_patch_positions(vision: CLIPVisionEncoder) -> None:
    """Start the image tower's position embeddings [1 + G², D] at 2-D sine-cosine features of each patch's grid cell
    (the class token's at zero), as MAE and MoCo v3 do (He et al. 2022; Chen et al. 2021), instead of N(0, 0.02²):
    at that scale the patches' colours swamp where they are, and the tower is slow to learn position at all. A
    quarter of the channels each holds sin(x ω_k), cos(x ω_k), sin(y ω_k), cos(y ω_k), ω_k = 100^(-k / (D/4)).
    The embeddings stay learned parameters."""
    weight = vision.vision_model["embeddings"].position_embedding.weight  # [1 + G², D]
    grid, quarter = math.isqrt(weight.shape[0] - 1), weight.shape[1] // 4
    omega = 100.0 ** (-torch.arange(quarter) / quarter)  # [D/4]
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # patches are row-major
    angles = [coordinate.reshape(-1, 1) * omega for coordinate in (x, y)]  # 2 x [G², D/4]
    features = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)  # [G², D]
    with torch.no_grad():
        weight[0].zero_()
        weight[1:] = features


def train_clip(tokenizer: Tokenizer, budget: StageBudget, rng: random.Random, seed: int
               ) -> tuple[CLIPTextEncoder, CLIPVisionEncoder]:
    """Train both CLIP towers contrastively; returns them frozen. The text tower reads captions without an attention
    mask, as the pipeline calls it."""
    torch.manual_seed(seed)
    text = CLIPTextEncoder(from_config(CLIPTextConfig, text_encoder_config(tokenizer.vocab)))
    vision = CLIPVisionEncoder(from_config(CLIPVisionConfig, image_encoder_config()))
    init_transformer(text)
    init_transformer(vision)
    init_patch_positions(vision)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
    params = [*text.parameters(), *vision.parameters(), log_scale]
    optimizer = Optimizer(params, lr=1e-3, weight_decay=0.1)

    def train_step() -> dict[str, float]:
        batch = sample_contrast_batch(rng, CLIP_BATCH)
        ids, mask = tokenize(tokenizer, batch.captions)
        ids = ids[:, : int(mask.sum(dim=1).max())]  # the padding after the end token cannot change the embedding
        text_embeds = F.normalize(text(ids)[0], dim=-1)  # [B, D]
        image_embeds = F.normalize(vision(clip_pixels(downsample(batch.images))), dim=-1)  # [B, D]
        logits = log_scale.clamp(max=math.log(100)).exp() * image_embeds @ text_embeds.T  # [B, B]
        labels = torch.arange(CLIP_BATCH)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.step(loss)
        accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
        return {"loss": loss.item(), "acc": accuracy, "scale": log_scale.exp().item()}

    run_stage(budget, train_step)
    return text.eval().requires_grad_(False), vision.eval().requires_grad_(False)


@torch.no_grad()
def embedding_stats(tokenizer: Tokenizer, text: CLIPTextEncoder, vision: CLIPVisionEncoder, rng: random.Random
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation [1, D] of the CLIP image embeddings of STATS_IMAGES scenes."""
    embeds = []
    for _ in range(STATS_IMAGES // CLIP_BATCH):
        batch = sample_batch(rng, CLIP_BATCH)
        embeds.append(vision(clip_pixels(downsample(batch.images))))
    stacked = torch.cat(embeds)  # [N, D]
    return stacked.mean(dim=0, keepdim=True), stacked.std(dim=0, keepdim=True)


def train_prior(tokenizer: Tokenizer, text: CLIPTextEncoder, vision: CLIPVisionEncoder, budget: StageBudget,
                rng: random.Random, seed: int) -> PriorTransformer:
    """Train the prior on the frozen CLIP towers; returns the weight average, with clip_mean / clip_std set."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    prior = PriorTransformer(from_config(PriorConfig, prior_config()))
    init_transformer(prior)
    mean, std = embedding_stats(tokenizer, text, vision, rng)
    with torch.no_grad():
        prior.clip_mean.copy_(mean)
        prior.clip_std.copy_(std)
    prior.clip_mean.requires_grad_(False)
    prior.clip_std.requires_grad_(False)
    params = [p for p in prior.parameters() if p.requires_grad]
    optimizer = Optimizer(params, lr=5e-4, weight_decay=0.01)
    ema = EMA(prior)
    process = ForwardProcess()

    def train_step() -> dict[str, float]:
        batch = sample_batch(rng, PRIOR_BATCH)
        captions = ["" if rng.random() < PRIOR_UNCOND else c for c in batch.captions]
        features = clip_features(tokenizer, text, vision, captions, downsample(batch.images))
        x0 = (features.image_embeds - mean) / std  # [B, D]
        t, _, xt = process.noise(x0, generator)
        predicted = prior(xt, t, features.text_embeds, features.text_states, features.text_mask)
        loss = F.mse_loss(predicted, x0)
        optimizer.step(loss)
        ema.update(prior)
        return {"loss": loss.item()}

    run_stage(budget, train_step)
    return ema.module

