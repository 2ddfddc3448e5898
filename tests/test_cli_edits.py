"""`dalle edit` in process: on the shipped `shapes` model (RePaint and image to image) and on the tiny Kandinsky 2.2
with its inpainting decoder; records that make an edit again, and bad input as one error line with exit code 2."""

import inspect
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from diffusers import KandinskyV22Img2ImgPipeline
from PIL import Image

from dalle_cli.cli.outputs import read_record
from dalle_cli.families.kandinsky.pipeline import Kandinsky
from dalle_cli.families.unclip.pipeline import UnCLIP
from test_cli import dalle, one_error_line, pixels

FAST = ["-m", "shapes", "--decoder-steps", "4", "--sr-steps", "3"]
PROMPT = "a green triangle to the left of a blue square"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("source")
    made = dalle("gen", "a red circle to the left of a blue square", "-m", "shapes", "--seed", 3, "-o", out, "-q")
    assert made.exit_code == 0, made.output
    [path] = out.glob("*.png")
    return path


def _mask(folder: Path, size: tuple[int, int], box: tuple[int, int, int, int], name: str = "mask.png") -> Path:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    mask.save(folder / name)
    return folder / name


def test_edit_repaints_the_mask_keeps_the_rest_and_records_how(source: Path, tmp_path: Path) -> None:
    width, height = Image.open(source).size
    mask = _mask(tmp_path, (width, height), (0, 0, width // 2, height))
    out = tmp_path / "out"
    made = dalle("edit", source, PROMPT, "--mask", mask, "--seed", 5, "-n", 2, "--resample", 1, *FAST, "--json",
                 "-o", out)
    assert made.exit_code == 0, made.output
    records = [json.loads(line) for line in made.stdout.splitlines()]
    first = records[0]
    assert first["edit"]["source"] == str(source) and len(first["edit"]["source_sha256"]) == 64
    assert first["mask"] == str(mask) and len(first["mask_sha256"]) == 64 and first["invert_mask"] is False
    assert [r["image_seed"] for r in records] == [5, 6] and first["prompt"] == PROMPT
    assert first["settings"]["resample"] == 1 and "strength" not in first["settings"]
    assert read_record(Path(first["path"])) == first
    assert (out / "edit-grid.png").is_file()
    for record in records:  # the right half, outside the mask, is the picture's own
        edited = pixels(Path(record["path"])).astype(int)
        assert np.abs(edited[:, width // 2:] - pixels(source)[:, width // 2:].astype(int)).max() <= 2
        assert np.abs(edited[:, :width // 2] - pixels(source)[:, :width // 2].astype(int)).max() > 50
    # A record's command makes its image again, and `gen -f` says which command that is.
    again = shlex.split(records[1]["again"])
    assert again[:2] == ["dalle", "edit"] and again[-2:] == ["--only", "1"]
    remade = dalle(*again[1:], "-o", tmp_path / "again", "-q")
    assert remade.exit_code == 0, remade.output
    [image] = (tmp_path / "again").glob("0001-*.png")
    assert np.array_equal(pixels(image), pixels(Path(records[1]["path"])))
    one_error_line(dalle("gen", "-f", "-", input=json.dumps(first)), 2, "the record of a `dalle edit` frame")


def test_inverted_and_own_masks(source: Path, tmp_path: Path) -> None:
    width, height = Image.open(source).size
    keep_right = _mask(tmp_path, (width, height), (width // 2, 0, width, height))
    inverted = dalle("edit", source, PROMPT, "--mask", keep_right, "--invert-mask", "--seed", 5, *FAST, "-o",
                     tmp_path / "a")
    holed = Image.open(source).convert("RGBA")
    holed.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    holed.save(tmp_path / "holed.png")
    own = dalle("edit", tmp_path / "holed.png", PROMPT, "--seed", 5, *FAST, "-o", tmp_path / "b", "--json")
    left = _mask(tmp_path, (width, height), (0, 0, width // 2, height))
    given = dalle("edit", source, PROMPT, "--mask", left, "--seed", 5, *FAST, "-o", tmp_path / "c")
    assert inverted.exit_code == own.exit_code == given.exit_code == 0, own.output
    assert json.loads(own.stdout)["mask"] == "the picture's transparency"
    [a], [b], [c] = (sorted((tmp_path / k).glob("*.png")) for k in "abc")
    assert np.array_equal(pixels(a), pixels(c)) and np.array_equal(pixels(b), pixels(c))


def test_image_to_image_records_its_strength(source: Path, tmp_path: Path) -> None:
    made = dalle("edit", source, "a yellow circle to the left of a green square", "--seed", 1, *FAST, "--json",
                 "-o", tmp_path)
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout)
    assert record["settings"]["strength"] == UnCLIP.img2img_strength and "mask" not in record
    stronger = dalle("edit", source, "a yellow circle", "--strength", 1, "--seed", 1, *FAST, "--json", "-o",
                     tmp_path / "b")
    assert json.loads(stronger.stdout)["settings"]["strength"] == 1.0


@pytest.mark.parametrize(("args", "message"), [
    (["--mask", "wide.png"], "the mask is 64x32 but the picture is 64x64"),
    (["--mask", "empty.png"], "the mask repaints nothing"),
    (["--mask", "full.png"], "the mask repaints the whole picture"),
    (["--mask", "text.png"], "cannot read image"),
    (["--mask", "missing.png"], "the mask 'missing.png' is not a picture file"),
    (["--strength", "0"], "strength must be a number greater than 0 and at most 1, got 0.0"),
    (["--strength", "1.5"], "strength must be a number greater than 0 and at most 1, got 1.5"),
    (["--invert-mask"], "--invert-mask needs a mask"),
])
def test_bad_input_is_one_line_and_exit_2(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("L", (64, 32), 255).save("wide.png")
    Image.new("L", (64, 64), 0).save("empty.png")
    Image.new("L", (64, 64), 255).save("full.png")
    Path("text.png").write_text("not a picture")
    one_error_line(dalle("edit", source, PROMPT, *args, *FAST, "-o", tmp_path / "out"), 2, message)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


def test_kandinsky_edits_and_what_each_decoder_refuses(tiny_kandinsky: tuple[Path, Path],
                                                       tiny_kandinsky_inpaint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DALLE_CACHE", str(tmp_path / "cache"))
    prior, decoder = tiny_kandinsky
    steps = ["--prior-steps", "2", "--decoder-steps", "3", "--width", "64", "--height", "64"]
    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), "white").save(picture)
    mask = _mask(tmp_path, (64, 64), (16, 16, 48, 48))
    inpaint = ["-m", tiny_kandinsky_inpaint, "--prior", prior]
    made = dalle("edit", picture, "a cat", "--mask", mask, *inpaint, *steps, "--json", "-o", tmp_path / "a")
    assert made.exit_code == 0, made.output
    edited = pixels(Path(json.loads(made.stdout)["path"])).astype(int)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert np.abs(edited[outside] - 255).max() <= 2
    img2img = dalle("edit", picture, "a cat", "-m", decoder, "--prior", prior, *steps, "--json", "-o", tmp_path / "b")
    assert img2img.exit_code == 0, img2img.output
    reference = inspect.signature(KandinskyV22Img2ImgPipeline.__call__).parameters["strength"].default
    assert json.loads(img2img.stdout)["settings"]["strength"] == Kandinsky.img2img_strength == reference
    one_error_line(dalle("edit", picture, "a cat", "--mask", mask, "--strength", 0.5, *inpaint, *steps, "-o",
                         tmp_path / "c"), 2, "cannot use both")
    one_error_line(dalle("edit", picture, "a cat", "--mask", mask, "-m", decoder, "--prior", prior, *steps, "-o",
                         tmp_path / "d"), 2, "kandinsky-2.2-inpaint")
    one_error_line(dalle("gen", "a cat", *inpaint, *steps, "-o", tmp_path / "e"), 2, "")
