"""`dalle vary --eta`, `dalle interp`, `dalle diff` and `--prior-candidates` in process, on the shipped `shapes`
model (few steps), and their bad input: one error line, exit code 2."""

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle_cli.cli.outputs import read_record
from dalle_cli.engine.latent import noise_seeds
from dalle_cli.settings import DIFF_AMOUNT
from dalle_cli.sources import locate
from test_cli import dalle, one_error_line, pixels

FAST = ["-m", "shapes", "--decoder-steps", "4", "--sr-steps", "3"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("sources")
    made = dalle("gen", "a red circle", "a blue square", "-m", "shapes", "--seed", 4, "-o", out, "-q")
    assert made.exit_code == 0, made.output
    return sorted(out.glob("*.png"))


def test_interp_writes_frames_records_a_sheet_and_an_animation(sources: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "path"
    made = dalle("interp", *sources, "--frames", 3, "--seed", 9, *FAST, "--json", "-o", out)
    assert made.exit_code == 0, made.output
    records = [json.loads(line) for line in made.stdout.splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2] and [r["theta"] for r in records] == [0.0, 0.5, 1.0]
    first = records[0]
    assert first["interpolate"][0]["source"] == str(sources[0]) and len(first["interpolate"][1]["source_sha256"]) == 64
    assert first["noise"] == "fixed" and first["seed"] == 9 and first["settings"]["decoder_steps"] == 4
    # The fixed noise is the one of the model's 4 candidates kept, recorded; the records make the frames again.
    assert first["settings"]["noise_candidates"] == 4 and first["noise_seed"] in noise_seeds(9, 4)
    assert not [name for name in first["settings"] if name.startswith("prior_")]  # two pictures: no prior ran
    assert {r["noise_seed"] for r in records} == {first["noise_seed"]}
    assert read_record(Path(first["path"])) == first
    with Image.open(out / "interp.webp") as animation:
        assert animation.n_frames == 3
    assert (out / "interp-grid.png").is_file()
    # A frame's record names the command that makes it again, alone.
    again = shlex.split(records[1]["again"])
    assert again[:2] == ["dalle", "interp"] and again[-2:] == ["--only", "1"]
    remade = dalle(*again[1:], "-o", tmp_path / "again", "-q")
    assert remade.exit_code == 0, remade.output
    [frame] = (tmp_path / "again").glob("0001-*.png")
    assert np.array_equal(pixels(frame), pixels(Path(records[1]["path"])))
    # It names the noise kept, so it tries no candidates: its record reads no noise_candidates.
    assert again[again.index("--noise-seed") + 1] == str(first["noise_seed"])
    remade_record = read_record(frame)
    assert remade_record["noise_seed"] == first["noise_seed"] and "noise_candidates" not in remade_record["settings"]
    # Without it, the frame alone decodes every candidate's whole path again and keeps the same noise.
    alone = dalle("interp", *sources, "--frames", 3, "--seed", 9, *FAST, "--only", 1, "-o", tmp_path / "alone", "-q")
    assert alone.exit_code == 0, alone.output
    [frame] = (tmp_path / "alone").glob("0001-*.png")
    assert np.array_equal(pixels(frame), pixels(Path(records[1]["path"])))
    # Fed to `gen -f`, it says which command makes it.
    line = json.dumps(first)
    one_error_line(dalle("gen", "-f", "-", input=line), 2, "the record of a `dalle interp` frame; its command")


def test_interp_inverted_gives_the_pictures_back_at_its_ends(sources: list[Path], tmp_path: Path) -> None:
    made = dalle("interp", *sources, "--frames", 2, "--noise", "inverted", *FAST[:2], "--animation", "gif",
                 "--json", "-o", tmp_path)
    assert made.exit_code == 0, made.output
    records = [json.loads(line) for line in made.stdout.splitlines()]
    for record, source in zip(records, sources):
        error = np.abs(pixels(Path(record["path"])).astype(int) - pixels(source).astype(int))
        assert error.mean() < 2, error.mean()
    assert (tmp_path / "interp.gif").is_file()
    # The record holds the settings the path read: the decoding's, no prior, no fixed-noise candidates.
    assert set(records[0]["settings"]) == {"decoder_steps", "sr_steps", "decoder_guidance"}


def test_interp_fast_names_its_presets_settings_in_the_command_that_makes_a_frame_again(
        sources: list[Path], tmp_path: Path) -> None:
    """A frame's command spells `--fast` out as the steps and sampler of the preset (over the defaults, under the
    options given), so it makes the frame again even after the preset changes."""
    made = dalle("interp", *sources, "--frames", 2, "--seed", 5, "-m", "shapes", "--fast", "--sr-steps", 3,
                 "--json", "-o", tmp_path / "path")
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout.splitlines()[1])
    again = shlex.split(record["again"])
    fast, default = locate("shapes").fast, locate("shapes").defaults
    assert "--fast" not in again and again[again.index("--sr-steps") + 1] == "3"
    assert again[again.index("--decoder-steps") + 1] == str(fast.decoder_steps) != str(default.decoder_steps)
    assert again[again.index("--sampler") + 1] == fast.sampler
    assert again.count("--sr-steps") == 1 and "--decoder-guidance" not in again  # the preset leaves it as it was
    remade = dalle(*again[1:], "-o", tmp_path / "again", "-q")
    assert remade.exit_code == 0, remade.output
    [frame] = (tmp_path / "again").glob("0001-*.png")
    assert np.array_equal(pixels(frame), pixels(Path(record["path"])))


def test_interp_through_a_prompt_records_the_prior_settings(sources: list[Path], tmp_path: Path) -> None:
    made = dalle("interp", sources[0], "a green square", "--frames", 2, "--seed", 3, *FAST, "--prior-steps", 4,
                 "--noise-candidates", 1, "--json", "-o", tmp_path)
    assert made.exit_code == 0, made.output
    settings = json.loads(made.stdout.splitlines()[0])["settings"]
    assert settings["prior_steps"] == 4 and settings["noise_candidates"] == 1 and "prior_guidance" in settings


def test_diff_frames_from_the_picture_to_the_caption(sources: list[Path], tmp_path: Path) -> None:
    made = dalle("diff", sources[0], "--to", "a blue circle", "--frames", 3, "--amount", 0.8, *FAST, "--json",
                 "-o", tmp_path)
    assert made.exit_code == 0, made.output
    records = [json.loads(line) for line in made.stdout.splitlines()]
    assert [r["amount"] for r in records] == [0.0, 0.4, 0.8]
    assert records[0]["text_diff"]["source_sha256"] and records[0]["to"] == "a blue circle"
    assert records[0]["from"] == ""


def test_diff_without_amount_moves_by_the_default_its_help_names(sources: list[Path], tmp_path: Path) -> None:
    made = dalle("diff", sources[0], "--to", "a blue circle", *FAST, "--json", "-o", tmp_path)
    assert made.exit_code == 0, made.output
    [record] = [json.loads(line) for line in made.stdout.splitlines()]
    assert record["amount"] == DIFF_AMOUNT
    shown = dalle("diff", "--help")
    assert f"[default: {DIFF_AMOUNT:g}]" in " ".join(shown.output.split())


def test_vary_eta_is_recorded_and_the_record_makes_it_again(sources: list[Path], tmp_path: Path) -> None:
    made = dalle("vary", sources[0], "--eta", 0.5, "--seed", 2, *FAST, "--json", "-o", tmp_path / "a")
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout)
    assert record["settings"]["eta"] == 0.5 and "inversion_guidance" not in record["settings"]  # unset: as before
    again = dalle("gen", "-f", "-", "-o", tmp_path / "b", input=json.dumps(record))
    assert again.exit_code == 0, again.output
    assert np.array_equal(pixels(Path(again.stdout.strip())), pixels(Path(record["path"])))
    plain = dalle("vary", sources[0], "--seed", 2, *FAST, "--json", "-o", tmp_path / "c")
    plain_settings = json.loads(plain.stdout)["settings"]
    assert "eta" not in plain_settings and "inversion_guidance" not in plain_settings  # nothing is inverted
    unguided = dalle("vary", sources[0], "--eta", 0.5, "--seed", 2, *FAST, "--inversion-guidance", 1, "--json",
                     "-o", tmp_path / "d")
    assert unguided.exit_code == 0, unguided.output
    unguided_record = json.loads(unguided.stdout)
    assert unguided_record["settings"]["inversion_guidance"] == 1.0
    assert not np.array_equal(pixels(Path(unguided_record["path"])), pixels(Path(record["path"])))
    remade = dalle("gen", "-f", "-", "-o", tmp_path / "e", input=json.dumps(unguided_record))
    assert remade.exit_code == 0, remade.output
    assert np.array_equal(pixels(Path(remade.stdout.strip())), pixels(Path(unguided_record["path"])))


def test_interp_records_the_inversion_guidance_only_where_it_inverts(sources: list[Path], tmp_path: Path) -> None:
    records = {}
    for noise in ("fixed", "inverted"):
        made = dalle("interp", *sources, "--frames", 2, "--seed", 1, *FAST, "--noise", noise,
                     "--inversion-guidance", 1, *(["--noise-candidates", 1] if noise == "fixed" else []), "--json",
                     "-o", tmp_path / noise)
        assert made.exit_code == 0, made.output
        records[noise] = json.loads(made.stdout.splitlines()[0])["settings"]
    assert "inversion_guidance" not in records["fixed"] and records["inverted"]["inversion_guidance"] == 1.0
    diffed = dalle("diff", sources[0], "--to", "a blue circle", *FAST, "--inversion-guidance", 1, "--json",
                   "-o", tmp_path / "diff")
    assert diffed.exit_code == 0, diffed.output
    assert json.loads(diffed.stdout)["settings"]["inversion_guidance"] == 1.0


def test_prior_candidates_is_a_generation_setting(tmp_path: Path) -> None:
    made = dalle("gen", "a red circle", "--prior-candidates", 2, *FAST, "--json", "-o", tmp_path)
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["settings"]["prior_candidates"] == 2


@pytest.fixture(scope="module")
def no_image_encoder(tiny_karlo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("text-only") / "model"
    shutil.copytree(tiny_karlo, folder, ignore=shutil.ignore_patterns("image_encoder", "feature_extractor"))
    return folder


@pytest.mark.parametrize("args,message", [
    (["interp", "a red circle", *FAST], "interp needs at least two inputs"),
    (["interp", "a red circle", "{a}", "--noise", "inverted", *FAST], "--noise inverted needs pictures: input 1"),
    (["interp", "{a}", "{b}", "--frames", "1", *FAST], "--frames must be at least 2"),
    (["interp", "{a}", "{b}", "--noise", "inverted", "--noise-candidates", "2", *FAST],
     "--noise-candidates is for a fixed noise"),
    (["interp", "{a}", "{b}", "--noise", "inverted", "--noise-seed", "3", *FAST], "--noise-seed is for a fixed noise"),
    (["interp", "{a}", "{b}", "--noise-seed", "-1", *FAST], "Invalid value for '--noise-seed'"),
    (["interp", "{a}", "{b}", "--noise-candidates", "17", *FAST], "noise_candidates must be an integer from 1 to 16"),
    (["vary", "{a}", "--eta", "0", "--inversion-guidance", "0.5", *FAST],
     "inversion_guidance must be a number of at least 1"),
    (["gen", "a red circle", "--noise-candidates", "2", *FAST], "No such option: --noise-candidates"),
    (["interp", "{a}", "{b}", "--only", "7", *FAST], "--only must be a frame from 0 to 4"),
    (["diff", "{a}", "--to", "a blue circle", "--amount", "1.5", *FAST], "--amount must be between 0 and 1"),
    (["diff", "{a}", "--to", "a blue circle", "--amount", "-0.1", *FAST], "--amount must be between 0 and 1"),
    (["diff", "{a}", "--to", "a blue circle", "--frames", "1", *FAST], "--frames must be at least 2"),
    (["diff", "not-a-file.png", "--to", "a blue circle", *FAST], "the picture 'not-a-file.png' is not a picture"),
    (["diff", "{a}", "--to", " ", *FAST], "--to is empty"),
    (["diff", "{a}", "--to", "a blue circle", "-m", "{text_only}"], "has no image encoder, so it cannot make text"),
    (["gen", "a red circle", "--prior-candidates", "0", *FAST], "prior_candidates must be an integer from 1 to 16"),
    (["vary", "{a}", "--eta", "2", *FAST], "eta must be a number from 0 to 1"),
    (["vary", "{a}", "--prior-candidates", "2", *FAST], "No such option: --prior-candidates"),
])
def test_bad_input_is_one_error_line(sources: list[Path], no_image_encoder: Path, args: list[str],
                                     message: str) -> None:
    filled = [a.format(a=sources[0], b=sources[1], text_only=no_image_encoder) for a in args]
    one_error_line(dalle(*filled), 2, message)
