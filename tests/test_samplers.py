"""`--sampler`, `--fast` and `--threads`: the samplers through both families' pipelines, the fast presets, the thread
count, and their bad input (one error line, exit code 2). The samplers' step-level parity is tests/test_dpmpp.py's
and tests/test_ddim.py's."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dalle_cli
from dalle_cli.devices import idle_cores, threads
from dalle_cli.errors import ConfigError, UsageError
from dalle_cli.shapes.evaluate import score
from dalle_cli.sources import locate
from test_cli import dalle, one_error_line, pixels
from test_kandinsky import monkeypatch_module  # noqa: F401  (a fixture: the zero embeddings' cache)

# One-object captions of seen pairs, each a different colour and shape, and two two-object scenes.
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a small yellow square", "a large purple circle",
           "a black triangle", "a pink square in the top left", "an orange circle in the bottom right",
           "a red square to the left of a blue circle", "a green circle above a yellow triangle"]


@pytest.fixture(scope="module")
def shapes() -> object:
    return dalle_cli.load("shapes", device="cpu")


def test_every_sampler_runs_every_stage_from_the_seed_alone(shapes) -> None:  # noqa: ANN001
    """Each sampler makes each image from its seed whatever its batch; the deterministic ones draw only the start
    noises, so they differ from the ancestral sampler, and from each other."""
    made = {}
    for sampler in ("ddpm", "ddim", "dpmpp"):
        s = shapes.defaults.updated({"sampler": sampler, "prior_steps": 4, "decoder_steps": 4, "sr_steps": 3}, "t")
        pair = shapes.generate_tensors(PROMPTS[:2], [5, 6], s)
        alone = shapes.generate_tensors(PROMPTS[1:2], [6], s)
        torch.testing.assert_close(pair[1:], alone, rtol=0, atol=1e-4)
        made[sampler] = pair
    default = shapes.generate_tensors(PROMPTS[:2], [5, 6], shapes.defaults.updated(
        {"prior_steps": 4, "decoder_steps": 4, "sr_steps": 3}, "t"))
    assert torch.equal(made["ddpm"], default)  # "ddpm" names each stage's own sampler, the default
    assert (made["ddim"] - made["ddpm"]).abs().max() > 0.1
    assert (made["dpmpp"] - made["ddim"]).abs().max() > 0.01


def test_the_fast_preset_follows_its_prompts_as_the_defaults_do(shapes) -> None:  # noqa: ANN001
    """A correctness check of `model.fast` on shapes, not a timing: its images are right as often as the default
    settings' on the same prompts and seeds (one miss more at most), with at most half the network calls."""
    fast, slow = shapes.fast, shapes.defaults
    assert fast.sampler is not None
    calls = [s.prior_steps + s.decoder_steps + s.sr_steps for s in (fast, slow)]
    assert 2 * calls[0] <= calls[1], calls
    seeds = list(range(100, 100 + len(PROMPTS)))
    right = [sum(score(p, im)["all"] for p, im in zip(PROMPTS, shapes.generate(PROMPTS, seeds, s)))
             for s in (fast, slow)]
    assert right[0] >= right[1] - 1, right


@pytest.fixture(scope="module")
def kandinsky(tiny_kandinsky: tuple[Path, Path], monkeypatch_module: pytest.MonkeyPatch) -> object:  # noqa: F811
    prior, decoder = tiny_kandinsky
    return dalle_cli.load(str(decoder), device="cpu", parts={"prior": str(prior)})


def test_kandinsky_samplers_run_its_prior_and_decoder(kandinsky) -> None:  # noqa: ANN001
    model = kandinsky
    base = {"prior_steps": 3, "decoder_steps": 3, "width": 64, "height": 64}
    made = {}
    for sampler in ("ddpm", "ddim", "dpmpp"):
        s = model.defaults.updated({**base, "sampler": sampler}, "t")
        pair = model.generate_tensors(["a cat", "a dog"], [1, 2], s)
        torch.testing.assert_close(pair[1:], model.generate_tensors(["a dog"], [2], s), rtol=0, atol=1e-5)
        made[sampler] = pair
    assert (made["ddim"] - made["ddpm"]).abs().max() > 1e-3
    assert (made["dpmpp"] - made["ddim"]).abs().max() > 1e-4


def test_operations_that_decode_an_inversion_refuse_another_sampler(shapes) -> None:  # noqa: ANN001
    picture = shapes.generate(["a red circle"], [1], shapes.defaults.updated(
        {"prior_steps": 3, "decoder_steps": 3, "sr_steps": 3}, "t"))[0]
    s = shapes.defaults.updated({"sampler": "dpmpp"}, "t")
    with pytest.raises(UsageError, match="decodes by DDIM"):
        shapes.vary([picture], [1], s, eta=0.0)
    with pytest.raises(UsageError, match="decodes by DDIM"):
        shapes.interpolate([picture, picture], 2, 1, s, noise="inverted")
    with pytest.raises(UsageError, match="decodes by DDIM"):
        shapes.text_diff([picture], "a blue circle", settings=s)
    with pytest.raises(UsageError, match="no other"):
        shapes.edit([picture], ["a blue circle"], [1], s)


def test_gen_sampler_is_recorded_and_the_record_makes_the_image_again(tmp_path: Path) -> None:
    made = dalle("gen", "a red circle", "-m", "shapes", "--sampler", "dpmpp", "--decoder-steps", "5", "--seed", 3,
                 "--json", "-o", tmp_path / "a")
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout)
    assert record["settings"]["sampler"] == "dpmpp" and record["settings"]["decoder_steps"] == 5
    again = dalle("gen", "-f", "-", "-o", tmp_path / "b", input=json.dumps(record))
    assert again.exit_code == 0, again.output
    assert np.array_equal(pixels(Path(again.stdout.strip())), pixels(Path(record["path"])))


def test_gen_fast_runs_the_models_preset_under_the_options_given(tmp_path: Path) -> None:
    made = dalle("gen", "a blue square", "-m", "shapes", "--fast", "--sr-steps", "3", "--seed", 1, "--json",
                 "-o", tmp_path)
    assert made.exit_code == 0, made.output
    preset = locate("shapes").fast
    recorded = json.loads(made.stdout)["settings"]
    assert recorded["sampler"] == preset.sampler and recorded["decoder_steps"] == preset.decoder_steps
    assert recorded["sr_steps"] == 3 != preset.sr_steps


@pytest.mark.parametrize(("args", "message"), [
    (["gen", "a red circle", "--sampler", "euler"], "sampler must be one of ddpm, ddim, dpmpp, got 'euler'"),
    (["gen", "a red circle", "--threads", "0"], "--threads"),
    (["diff", "x.png", "--to", "a red circle", "--sampler", "ddim"], "No such option: --sampler"),
    (["edit", "x.png", "a red circle", "--fast"], "No such option: --fast"),
])
def test_bad_sampler_and_thread_options_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    one_error_line(dalle(*args, "-m", "shapes"), 2, message)


def test_a_bad_dalle_threads_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = dalle("gen", "a red circle", "-m", "shapes", "-o", tmp_path, env={"DALLE_THREADS": "lots"})
    one_error_line(result, 2, "DALLE_THREADS must be an integer from 1 to 1024, got 'lots'")
    assert not list(tmp_path.glob("*.png"))


def test_vary_eta_with_a_sampler_is_one_line_and_exit_2(tmp_path: Path) -> None:
    made = dalle("gen", "a red circle", "-m", "shapes", "--seed", 1, "--prior-steps", "3", "--decoder-steps", "3",
                 "-o", tmp_path, "-q")
    assert made.exit_code == 0, made.output
    [picture] = tmp_path.glob("*.png")
    one_error_line(dalle("vary", picture, "-m", "shapes", "--eta", "0", "--sampler", "ddim", "-o", tmp_path / "v"),
                   2, "decodes by DDIM")


def test_threads_come_from_the_option_then_the_environment_then_the_idle_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DALLE_THREADS", "3")
    assert threads(5) == 5 and threads() == 3
    monkeypatch.delenv("DALLE_THREADS")
    usable = len(__import__("os").sched_getaffinity(0))
    assert 1 <= threads() <= usable and 1 <= idle_cores(0.01) <= usable
    for bad in (0, 2000):
        with pytest.raises(UsageError, match="threads must be an integer from 1 to 1024"):
            threads(bad)


def test_the_cli_sets_torchs_threads(tmp_path: Path) -> None:
    made = dalle("gen", "a red circle", "-m", "shapes", "--threads", "1", "--prior-steps", "2", "--decoder-steps",
                 "2", "--sr-steps", "2", "-o", tmp_path, "-q")
    assert made.exit_code == 0, made.output
    assert torch.get_num_threads() == 1


def test_a_registry_fast_preset_is_checked_and_laid_over_the_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "registry.json"
    entry = {"path": str(Path(__file__).resolve().parent.parent / "weights" / "shapes"),
             "defaults": {"decoder_steps": 12}, "fast": {"decoder_steps": 6, "sampler": "ddim"}}
    registry.write_text(json.dumps({"models": {"mine": entry}}))
    monkeypatch.setenv("DALLE_REGISTRY", str(registry))
    source = locate("mine")
    assert source.defaults.decoder_steps == 12 and source.defaults.sampler is None
    assert source.fast.decoder_steps == 6 and source.fast.sampler == "ddim"
    assert source.fast.prior_steps == locate(entry["path"]).fast.prior_steps  # the folder's preset underneath
    registry.write_text(json.dumps({"models": {"mine": {**entry, "fast": {"sampler": "heun"}}}}))
    with pytest.raises(ConfigError, match="fast: sampler must be one of"):
        locate("mine")
