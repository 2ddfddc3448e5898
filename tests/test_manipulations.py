"""The paper's manipulations (Ramesh et al. 2022, §2.2, §3) through the library, on the shipped `shapes` model
(whose evaluator says whether a picture came back) and on the tiny Kandinsky 2.2."""

from pathlib import Path

import pytest
import torch

from dalle_cli import load
from dalle_cli.diffusion.slerp import slerp
from dalle_cli.engine.latent import Latent, best_index, best_of, best_path, diff_target, noise_seeds, path_frames
from dalle_cli.errors import UsageError
from dalle_cli.images import fit, to_pil
from dalle_cli.shapes.evaluate import detect

PROMPTS = ["a red circle", "a large blue square in the top left", "a small green triangle in the bottom right"]


@pytest.fixture(scope="module")
def shapes():  # noqa: ANN201
    return load("shapes", device="cpu")


@pytest.fixture(scope="module")
def pictures(shapes):  # noqa: ANN001, ANN201
    return shapes.generate(PROMPTS, [11, 12, 13])


def _psnr(images: torch.Tensor, pictures: list) -> list[float]:
    target = fit(pictures, images.shape[-1], images.shape[-2])
    mse = ((images.float().clamp(-1, 1) - target) ** 2).mean(dim=(1, 2, 3)) / 4  # on the [0, 1] scale
    return (-10 * torch.log10(mse)).tolist()


def _attributes(image) -> tuple:  # noqa: ANN001
    blob = detect(image)[0]
    return blob.color, blob.shape, blob.size, blob.position


def test_eta_zero_gives_the_picture_back_and_eta_one_varies_it(shapes, pictures) -> None:  # noqa: ANN001
    again = shapes.vary_tensors(pictures, [1, 2, 3], eta=0.0)
    assert min(_psnr(again, pictures)) > 30
    from dalle_cli.images import to_pil

    assert [_attributes(p) for p in to_pil(again)] == [_attributes(p) for p in pictures]
    varied = shapes.vary_tensors(pictures, [1, 2, 3], eta=1.0)
    assert max(_psnr(varied, pictures)) < min(_psnr(again, pictures))
    # η comes from the settings too, and a seed changes an η > 0 variation only.
    settings = shapes.defaults.updated({"eta": 1.0}, "test")
    assert torch.equal(shapes.vary_tensors(pictures, [1, 2, 3], settings), varied)
    assert not torch.equal(shapes.vary_tensors(pictures, [4, 5, 6], settings), varied)
    assert torch.equal(shapes.vary_tensors(pictures, [4, 5, 6], eta=0.0), again)


def test_inversions_and_their_decodings_are_guided_at_the_inversion_guidance(shapes, pictures) -> None:  # noqa: ANN001
    """Inverted unguided, a latent is the decoder's at guidance 1 and decodes at 1, while fresh noise decodes at
    the decoder's own guidance; unset (the default), the inversion is guided as the decoder is."""
    s = shapes.defaults
    assert (s.inversion_guidance, s.decoder_guidance) == (None, 2.0)
    own = s.updated({"inversion_guidance": 1.0}, "test")
    unguided = s.updated({"decoder_guidance": 1.0}, "test")
    latent, same = shapes.invert(pictures[:1], own), shapes.invert(pictures[:1], unguided)
    assert all(torch.equal(a, b) for a, b in zip(latent.noises, same.noises, strict=True))
    assert not torch.equal(shapes.invert(pictures[:1]).noises[0], latent.noises[0])
    back = shapes.render(latent.embeds, latent.noises, [0], own)
    assert torch.equal(back, shapes.render(latent.embeds, latent.noises, [0], unguided))
    fresh = shapes.render(latent.embeds, None, [3], own, eta=0.0)
    assert torch.equal(fresh, shapes.render(latent.embeds, None, [3], eta=0.0))
    assert not torch.equal(fresh, shapes.render(latent.embeds, None, [3], unguided, eta=0.0))


def test_vary_without_eta_is_the_noise_variation(shapes, pictures) -> None:  # noqa: ANN001
    assert torch.equal(shapes.vary_tensors(pictures[:1], [7]), shapes.noise_variation(pictures[:1], [7],
                                                                                        shapes.defaults))


def test_interpolation_frames_ends_and_fixed_noise(shapes, pictures) -> None:  # noqa: ANN001
    a, b = pictures[0], pictures[1]
    inverted = shapes.interpolate_tensors([a, b], 3, 5, noise="inverted")
    assert inverted.shape[0] == 3
    assert min(_psnr(inverted[[0]], [a]) + _psnr(inverted[[2]], [b])) > 30  # the ends reconstruct the inputs
    one = shapes.defaults.updated({"noise_candidates": 1}, "test")  # the seed's own noise, no candidates
    fixed = shapes.interpolate_tensors([a, b], 3, 5, one)
    # θ = 0: z_a decoded by the ancestral samplers from seed 5's draws, which is the picture's noise variation.
    start = shapes.render(shapes.encode_image([a]), None, [5], eta=None)
    assert torch.allclose(start, shapes.noise_variation([a], [5], shapes.defaults), atol=1e-5)
    # A frame does not depend on its batch beyond float rounding (batched convolutions round differently).
    assert torch.allclose(fixed[[0]], start, atol=1e-5)
    assert torch.allclose(shapes.interpolate_tensors([a, b], 3, 5, one, only=[1]), fixed[[1]], atol=1e-5)
    # Three inputs, two segments: the junction frame is made once; a prompt's embedding comes from the prior.
    path = shapes.interpolate_tensors([a, "a yellow square", b], 3, 5, one)
    assert path.shape[0] == 5 and torch.allclose(path[[0]], fixed[[0]], atol=1e-5)
    assert path_frames(3, 3) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]


def test_fixed_noise_is_the_candidate_whose_path_goes_most_steadily(shapes, pictures) -> None:  # noqa: ANN001
    """With K noise candidates (shapes' default is 4) the path is decoded from the seed, among `noise_seeds`, whose
    own path `best_path` keeps, and its frames are that path's; a caller can pass the seed for further frames."""
    a, b = pictures[1], pictures[2]
    seeds = noise_seeds(5, 4)
    assert seeds[0] == 5 and len(set(seeds)) == 4 and not set(seeds) & set(noise_seeds(6, 4))
    assert shapes.defaults.noise_candidates == 4
    embeds = shapes.encode_image([a, b])  # [2, D]
    blends = torch.cat([slerp(embeds[[0]], embeds[[1]], theta) for theta in (0.0, 0.5, 1.0)])  # [3, D]
    paths = [shapes.render(blends, None, [seed] * 3, eta=None) for seed in seeds]  # each candidate on its own
    expected = best_path(shapes.encode_image(to_pil(torch.cat(paths))), embeds, path_frames(2, 3))
    latents = shapes.path_latents([a, b], 5)
    kept, frames = shapes.pick_noise(latents, 3, 5)
    assert kept == seeds[expected] and torch.allclose(frames, paths[expected], atol=1e-5)
    one = shapes.defaults.updated({"noise_candidates": 1}, "test")
    assert shapes.pick_noise(latents, 3, 5, one)[0] == 5
    # Decoding in batches of 2 frames gives each frame as the batch it is then made in.
    assert torch.allclose(shapes.pick_noise(latents, 3, 5, batch=2)[1], frames, atol=1e-5)
    assert torch.equal(shapes.interpolate_tensors(latents, 3, 5), frames)
    assert torch.allclose(shapes.interpolate_tensors(latents, 3, 5, only=[2], noise_seed=kept), frames[[2]],
                          atol=1e-5)


def _steady(*similarities: list[float]) -> torch.Tensor:
    """Unit embeddings [F, 2] of frames whose cosine to input 0 (the first axis) is each given value; input 1 is the
    second axis, so a frame nearer input 0 is farther from input 1."""
    cosines = torch.tensor(similarities).flatten()
    return torch.stack([cosines, (1 - cosines**2).clamp(min=0).sqrt()], dim=1)


def test_best_path_keeps_the_path_that_never_steps_back_then_the_closest_ends() -> None:
    inputs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    path = path_frames(2, 4)
    # Candidate 0 has the closest ends but its second frame is nearer input 0 than the first; candidate 1 is steady.
    decoded = torch.cat([_steady([0.99, 1.0, 0.5, 0.0]), _steady([0.97, 0.9, 0.5, 0.05])])
    assert best_path(decoded, inputs, path) == 1
    # Two steady paths: the closer ends win; the same path twice: the earlier candidate.
    closer = _steady([1.0, 0.9, 0.5, 0.0])
    assert best_path(torch.cat([_steady([0.97, 0.9, 0.5, 0.05]), closer]), inputs, path) == 1
    assert best_path(torch.cat([closer, closer]), inputs, path) == 0
    # No steady path: the least step back wins (a rise of 0.01 against one of 0.2), whatever its ends.
    assert best_path(torch.cat([_steady([1.0, 0.7, 0.9, 0.0]), _steady([0.9, 0.91, 0.5, 0.1])]), inputs, path) == 1


def test_best_path_judges_each_segment_against_its_own_two_inputs() -> None:
    """Three inputs: along segment 0 the frames leave input 0 for input 1, along segment 1 input 1 for input 2; the
    cosine to input 0 may rise again in segment 1 (the path may come back near it) without a step back."""
    inputs = torch.eye(3)
    path = path_frames(3, 3)  # frames at inputs 0, 1, 2: 0, 2, 4
    going = torch.tensor([[1.0, 0, 0], [0.7, 0.7, 0], [0, 1.0, 0], [0.5, 0.5, 0.5], [0, 0, 1.0]])
    back_to_1 = going.clone()
    back_to_1[3:] = torch.tensor([[0, 0.6, 0.8], [0, 0.61, 0.79]])  # at the end a little nearer input 1 again
    assert best_path(torch.cat([back_to_1, going]), inputs, path) == 1
    assert best_path(torch.cat([going, back_to_1]), inputs, path) == 0


def test_interpolation_refuses_bad_input(shapes, pictures) -> None:  # noqa: ANN001
    with pytest.raises(UsageError, match="at least two inputs"):
        shapes.interpolate([pictures[0]], 3, 1)
    with pytest.raises(UsageError, match="at least 2 frames"):
        shapes.interpolate(pictures[:2], 1, 1)
    with pytest.raises(UsageError, match="inverted noise needs pictures"):
        shapes.interpolate([pictures[0], "a red circle"], 3, 1, noise="inverted")
    with pytest.raises(UsageError, match="numbered 0 to 2"):
        shapes.interpolate(pictures[:2], 3, 1, only=[3])


def test_text_diff_at_zero_is_the_reconstruction_and_moves_with_theta(shapes, pictures) -> None:  # noqa: ANN001
    latent = shapes.invert(pictures[:1])
    frames = shapes.text_diff_tensors([latent], "a blue circle", amounts=[0.0, 0.5, 1.0])
    assert torch.allclose(frames[[0]], shapes.render(latent.embeds, latent.noises, [0]), atol=1e-5)
    assert not torch.equal(frames[[1]], frames[[0]]) and not torch.equal(frames[[2]], frames[[1]])
    with pytest.raises(UsageError, match="from 0 to 1"):
        shapes.text_diff([latent], "a blue circle", amounts=[1.5])


def test_text_diff_decodes_with_the_decoder_reading_its_caption(shapes, pictures) -> None:  # noqa: ANN001
    latent = shapes.invert(pictures[:1])  # "a red circle"
    [moved] = shapes.text_diff_tensors([latent], "a blue circle", baseline="a red circle", amounts=[0.55])
    to, baseline = shapes.text_embeddings(["a blue circle", "a red circle"]).split(1)
    embeds = slerp(latent.embeds, diff_target(latent.embeds, to, baseline), 0.55)
    reading = shapes.render(embeds, latent.noises, [0], captions=["a blue circle"])
    assert torch.allclose(moved[None], reading, atol=1e-5)
    assert (reading - shapes.render(embeds, latent.noises, [0])).abs().max() > 0.1  # the caption is read
    [blob, *_] = detect(to_pil(moved[None])[0])
    assert (blob.color, blob.shape) == ("blue", "circle")
    with pytest.raises(UsageError, match="1 images but 2 captions"):
        shapes.render(embeds, latent.noises, [0], captions=["a", "b"])


def test_diff_target_turns_the_direction_and_keeps_the_length() -> None:
    z_i = torch.tensor([[3.0, 4.0, 0.0]])
    target = diff_target(z_i, torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.allclose(target, torch.tensor([[0.0, 0.0, 5.0]]))
    with pytest.raises(UsageError, match="same embedding"):
        diff_target(z_i, z_i, z_i)


def test_reranking_keeps_the_candidate_closest_to_the_text() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    first, second = torch.tensor([[1.0, 0.1], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.1, 1.0]])
    assert best_index([first, second], text).tolist() == [0, 1]
    assert torch.equal(best_of([first, second], text), torch.tensor([[1.0, 0.1], [0.1, 1.0]]))
    assert best_of([first], text) is first


def test_prior_candidates_draw_after_each_other_from_the_images_generator(shapes) -> None:  # noqa: ANN001
    """K = 1 is today's sample; with K = 2 the second candidate is the prior run on the next draws of the same
    generator, and the kept one is the candidate of higher cosine similarity to the prompt's text embedding."""
    prompts, seeds = ["a red circle to the left of a blue square"] * 2, [3, 4]
    one = shapes.prompt_embeddings(prompts, seeds, shapes.defaults)
    two = shapes.prompt_embeddings(prompts, seeds, shapes.defaults.updated({"prior_candidates": 2}, "test"))
    from dalle_cli.engine.noise import ImageNoise

    with torch.inference_mode():
        text = shapes.encode_text(prompts, True)
        noise = ImageNoise(seeds)
        first = shapes.prior(text, noise, shapes.defaults)
        second = shapes.prior(text, noise, shapes.defaults)  # the same generators, drawn on
    assert torch.equal(first, one)
    assert torch.equal(two, best_of([first, second], text.prompt_embeds))
    assert not torch.equal(first, second)


def test_kandinsky_inverts_through_movq_and_its_decoder(tiny_kandinsky: tuple[Path, Path]) -> None:
    from PIL import Image

    from dalle_cli.families.kandinsky.settings import KandinskySettings as Settings

    prior, decoder = tiny_kandinsky
    model = load(str(decoder), parts={"prior": str(prior)}, device="cpu")
    settings = Settings(2, 4, width=64, height=64)
    picture = Image.new("RGB", (80, 64), (200, 40, 40))
    latent = model.invert([picture], settings)
    assert isinstance(latent, Latent) and latent.noises[0].shape == (1, 4, 8, 8)
    again = model.vary_tensors([picture], [1], settings, eta=0.0)
    assert again.shape == (1, 3, 64, 64)
    assert torch.equal(again, model.render(latent.embeds, latent.noises, [9], settings))  # η = 0: no seed
    # Its inversion guidance guides the inversion and the decoding of its latents alike, as unCLIP's does.
    own, unguided = (Settings(2, 4, width=64, height=64, **kw) for kw in ({"inversion_guidance": 1.0},
                                                                         {"decoder_guidance": 1.0}))
    inverted = model.invert([picture], own)
    assert torch.equal(inverted.noises[0], model.invert([picture], unguided).noises[0])
    assert not torch.equal(inverted.noises[0], latent.noises[0])
    assert torch.equal(model.render(inverted.embeds, inverted.noises, [9], own),
                       model.render(inverted.embeds, inverted.noises, [9], unguided))
    frames = model.text_diff_tensors([latent], "a blue square", amounts=[0.0, 1.0], settings=settings)
    assert torch.allclose(frames[[0]], again, atol=1e-5)
    with pytest.raises(UsageError, match="1 images but 2 captions"):
        model.render(latent.embeds, latent.noises, [9], settings, captions=["a", "b"])
    path = model.interpolate_tensors([picture, "a cat"], 2, 3, settings)
    assert path.shape == (2, 3, 64, 64)
    # Kandinsky's fixed noise is picked from candidates as unCLIP's is, and the path is the kept seed's own.
    picking = settings.__class__(2, 4, width=64, height=64, noise_candidates=3)
    latents = model.path_latents([picture, "a cat"], 3, picking)
    kept = model.pick_noise(latents, 2, 3, picking)[0]
    assert kept in noise_seeds(3, 3)
    assert torch.allclose(model.interpolate_tensors(latents, 2, 3, picking),
                          model.interpolate_tensors(latents, 2, kept, settings), atol=1e-5)
    two = settings.__class__(2, 4, width=64, height=64, prior_candidates=2)
    assert model.generate_tensors(["a cat"], [1], two).shape == (1, 3, 64, 64)
