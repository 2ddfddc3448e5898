"""Edits: the mask conventions and the paste back (`dalle_cli.masks`), RePaint's walk and sampler
(`dalle_cli.diffusion.repaint`) against diffusers' `RePaintScheduler`, and `Model.edit` on the shipped `shapes`
model (RePaint in its decoder, SDEdit for image to image)."""

import functools

import pytest
import torch
from diffusers import RePaintScheduler
from PIL import Image

from dalle_cli import load
from dalle_cli.api import Progress
from dalle_cli.diffusion import repaint, sampler, schedule
from dalle_cli.errors import UsageError
from dalle_cli.images import fit
from dalle_cli.masks import feather, feather_width, fit_mask, has_transparency, paste, read_mask


def _values(image: Image.Image) -> list[int]:
    return list(image.tobytes())


def _half(mode: str, size: tuple[int, int] = (8, 4)) -> Image.Image:
    """A mask whose left half is white (or, in RGBA, transparent)."""
    if mode == "RGBA":
        image = Image.new("RGBA", size, (0, 0, 0, 255))
        image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    else:
        image = Image.new(mode, size, 0)
        image.paste(255 if mode == "L" else (255, 255, 255) if mode == "RGB" else 1, (0, 0, size[0] // 2, size[1]))
    return image


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "RGBA"])
def test_both_conventions_repaint_the_marked_half(mode: str) -> None:
    repainted = _values(read_mask(_half(mode)))
    left = [repainted[y * 8 + x] for y in range(4) for x in range(4)]
    right = [repainted[y * 8 + x] for y in range(4) for x in range(4, 8)]
    assert set(left) == {255} and set(right) == {0}
    assert _values(read_mask(_half(mode), invert=True)) == [255 - v for v in repainted]


def test_an_opaque_rgba_mask_reads_its_brightness_and_a_palette_its_transparency() -> None:
    opaque = _half("RGB").convert("RGBA")
    assert not has_transparency(opaque) and _values(read_mask(opaque)) == _values(read_mask(_half("L")))
    palette = Image.new("P", (8, 4), 1)  # index 0 (transparent) on the left, 1 (opaque white) on the right
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.paste(0, (0, 0, 4, 4))
    palette.info["transparency"] = 0
    assert has_transparency(palette) and _values(read_mask(palette)) == _values(read_mask(_half("RGBA")))


def test_a_mask_is_cropped_and_resized_as_the_picture_is() -> None:
    picture = Image.new("RGB", (96, 64), "white")
    picture.paste((255, 0, 0), (40, 20, 60, 40))  # a red box, and a mask of the same box at half the size
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (20, 10, 30, 20))
    repaint_ = fit_mask(read_mask(mask), picture.size, 32, 32)[0, 0]  # [32, 32] of 0 and 1
    assert set(repaint_.unique().tolist()) == {0.0, 1.0}
    red = (fit([picture], 32, 32)[0, 1] < 0)  # where the fitted picture is red (its green channel low)
    assert torch.equal(red, repaint_.bool())


@pytest.mark.parametrize(("size", "message"), [((64, 32), "is 64x32 but the picture is 64x64"),
                                               ((64, 64), "repaints nothing"), ((64, 65), "repaints nothing")])
def test_bad_masks_are_refused(size: tuple[int, int], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        fit_mask(Image.new("L", size, 0), (64, 64), 32, 32)
    with pytest.raises(UsageError, match="the whole picture"):
        fit_mask(Image.new("L", (64, 64), 255), (64, 64), 32, 32)


def test_the_feather_lies_inside_the_mask_and_paste_keeps_the_rest() -> None:
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    soft = feather(mask, 2)
    assert torch.equal(soft[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert soft[0, 0, 4, 4] == 0 and soft[0, 0, 5, 5] == 0.5 and soft[0, 0, 6, 6] == 1
    edited, picture = torch.ones(1, 3, 16, 16), -torch.ones(1, 3, 16, 16)
    out = paste(edited, picture, soft)
    assert torch.equal(out[:, :, mask[0, 0] == 0], picture[:, :, mask[0, 0] == 0])
    assert torch.equal(out[..., 6:10, 6:10], edited[..., 6:10, 6:10])
    assert feather_width(256, 256) == 4 and feather_width(64, 64) == 1 and feather_width(32, 16) == 1


@pytest.mark.parametrize(("count", "resample", "jump"), [(10, 1, 1), (10, 3, 1), (12, 2, 3), (25, 4, 2)])
def test_the_walk_is_repaints_jump_schedule(count: int, resample: int, jump: int) -> None:
    path = repaint.walk(count, resample, jump)
    reference = RePaintScheduler(num_train_timesteps=count)
    reference.set_timesteps(count, jump_length=jump, jump_n_sample=resample)
    # Our positions count steps taken (0 is x_T, count the clean sample); RePaint's times count down to 0.
    assert [count - 1 - i for i in path[:-1]] == reference.timesteps.tolist() and path[-1] == count
    downs = sum(b > a for a, b in zip(path, path[1:]))
    assert downs == count + (resample - 1) * jump * len(range(0, count - jump, jump))


def test_renoise_is_repaints_undo_step() -> None:
    reference = RePaintScheduler(num_train_timesteps=50, beta_schedule="linear")
    reference.set_timesteps(50)
    tables = schedule.NoiseSchedule(reference.betas, reference.alphas_cumprod)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in (1, 20, 49):
        expected = reference.undo_step(x, t, torch.Generator().manual_seed(t))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        assert (repaint.renoise(x, t - 1, t, noise, tables) - expected).abs().max() <= 1e-6


def _toy() -> tuple[list[int], schedule.NoiseSchedule, schedule.SchedulerConfig]:
    config = schedule.SchedulerConfig(num_train_timesteps=100, variance_type="fixed_small_log",
                                      prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)
    return schedule.timesteps(6, config), schedule.noise_schedule(config), config


def test_without_a_known_region_one_pass_is_the_ancestral_sampler() -> None:
    steps, tables, config = _toy()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    noises = torch.randn(len(steps), 2, 3, 8, 8, generator=torch.Generator().manual_seed(2))

    def denoise(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        return 0.5 * x + 0.01 * t

    step = functools.partial(sampler.step, schedule=tables, config=config)
    ours = repaint.sample(denoise, x, steps, repaint.walk(len(steps), 1), lambda o, t, p, x, n: step(o, t, p, x,
                          noise=n), tables, lambda j: noises[j])
    assert repaint.draws(repaint.walk(len(steps), 1), steps, False) == len(steps) - 1
    assert torch.equal(ours, sampler.sample(denoise, x, steps, tables, config, lambda i: noises[i]))


def test_the_known_region_comes_out_exactly() -> None:
    steps, tables, config = _toy()
    known = torch.rand(1, 3, 8, 8) * 2 - 1
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :4] = 1
    path = repaint.walk(len(steps), 3)
    noises = torch.randn(repaint.draws(path, steps, True), 1, 3, 8, 8)
    step = functools.partial(sampler.step, schedule=tables, config=config)
    out = repaint.sample(lambda x, t, i: torch.zeros_like(x), torch.randn(1, 3, 8, 8), steps, path,
                         lambda o, t, p, x, n: step(o, t, p, x, noise=n), tables, lambda j: noises[j], known, keep)
    assert torch.equal(out[..., :4], known[..., :4]) and not torch.equal(out[..., 4:], known[..., 4:])


@pytest.fixture(scope="module")
def shapes():  # noqa: ANN201
    return load("shapes", device="cpu")


@pytest.fixture(scope="module")
def picture(shapes) -> Image.Image:  # noqa: ANN001
    return shapes.generate(["a red circle to the left of a blue square"], [3])[0]


def _left_half(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


def test_an_edit_keeps_every_pixel_outside_the_mask(shapes, picture: Image.Image) -> None:  # noqa: ANN001
    prompts = ["a green triangle to the left of a blue square"] * 2
    events: list[Progress] = []
    edited = shapes.edit_pixels([picture] * 2, prompts, [5, 6], masks=[_left_half(picture.size)] * 2,
                                progress=events.append)
    source = fit([picture], *picture.size)
    right = slice(picture.size[0] // 2, None)
    assert torch.equal(edited[..., right], source.expand(2, -1, -1, -1)[..., right])
    assert not torch.allclose(edited[0], edited[1])  # each image from its own seed
    assert len(events) == shapes.edit_events(shapes.defaults, True)
    assert [e.stage for e in events][:2] == ["edit", "prior"]
    # An image depends on its seed, not its batch.
    alone = shapes.edit_pixels([picture], prompts[:1], [6], masks=[_left_half(picture.size)])
    assert torch.allclose(alone, edited[1:], atol=1e-5)


def test_image_to_image_runs_the_last_steps_at_the_default_strength(shapes, picture: Image.Image) -> None:  # noqa: ANN001
    settings = shapes.edit_settings(None, masked=False)
    assert settings.strength == shapes.img2img_strength
    assert shapes.edit_settings(None, masked=True).strength is None
    assert schedule.strength_steps(list(range(10)), 0.35) == [7, 8, 9] and schedule.strength_steps([4, 2], 0.1) == [2]
    events: list[Progress] = []
    out = shapes.edit_pixels([picture], ["a green circle to the left of a yellow square"], [2], settings,
                             progress=events.append)
    decoder = [e for e in events if e.stage == "decoder"]
    assert len(decoder) == len(schedule.strength_steps(list(range(settings.decoder_steps)), settings.strength))
    assert len(events) == shapes.edit_events(settings, False) and out.shape == (1, 3, *picture.size[::-1])
    with pytest.raises(UsageError, match="a mask, a strength, or both"):
        shapes.edit_tensors(fit([picture], *picture.size), None, ["x"], [1])


def test_a_picture_with_transparency_is_its_own_mask(shapes, picture: Image.Image) -> None:  # noqa: ANN001
    holed = picture.convert("RGBA")
    holed.paste((0, 0, 0, 0), (0, 0, picture.size[0] // 2, picture.size[1]))
    prompt = ["a green triangle to the left of a blue square"]
    own = shapes.edit_pixels([holed], prompt, [5])
    given = shapes.edit_pixels([holed], prompt, [5], masks=[_left_half(picture.size)])
    assert torch.equal(own, given)
    with pytest.raises(UsageError, match="some pictures have transparency"):
        shapes.edit_pixels([holed, picture], prompt * 2, [5, 6])


def test_karlo_layout_edits_repaint_through_both_super_resolution_unets(tiny_karlo) -> None:  # noqa: ANN001
    model = load(str(tiny_karlo), device="cpu")
    size = model.output_size
    picture = Image.new("RGB", (size, size), (200, 30, 30))
    calls: list[Progress] = []
    settings = model.defaults.updated({"prior_steps": 2, "decoder_steps": 3, "sr_steps": 2, "resample": 2}, "test")
    edited = model.edit_pixels([picture], ["a cat"], [4], settings, masks=[_left_half(picture.size)],
                               progress=calls.append)
    source = fit([picture], size, size)
    assert torch.equal(edited[..., size // 2:], source[..., size // 2:])
    assert not torch.allclose(edited[..., :size // 2 - 1], source[..., :size // 2 - 1], atol=0.1)
    assert len(calls) == model.edit_events(settings, True)
    assert [e.steps for e in calls if e.stage == "decoder"][0] == 5  # 3 steps, and the 2 that end on a noisy timestep once more
