"""`dalle gen`, `dalle vary`, `dalle models` and `dalle info` in process (typer's CliRunner) on the tiny checkpoint.

Every run uses 2 sampler steps per stage. The expensive runs are few and each is checked for several things.
"""

import errno
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from dalle_cli import __version__
from dalle_cli.cli import Display, app
from dalle_cli.cli.outputs import read_record
from dalle_cli.registry import format_size
from dalle_cli.api import Progress
from dalle_cli.families.unclip.pipeline import UnCLIP

STEPS = ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2"]


def dalle(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def files(folder: Path) -> list[str]:
    """The names in an output folder, hidden temporary files included, but not the runs' manifests (.dalle/)."""
    return [p.name for p in folder.iterdir() if p.name != ".dalle"]


def one_error_line(result, code: int, message: str) -> None:  # noqa: ANN001
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert message in errors[0], errors[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def batch_run(tiny_karlo: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Two prompts, five images each, in batches of five, with --json and --grid."""
    out = tmp_path_factory.mktemp("batch")
    result = dalle("gen", "a green square", "a red circle", "-m", tiny_karlo, "--seed", 40, "-n", 5, "--batch-size", 5,
                   "--json", "--grid", "-o", out, *STEPS)
    return out, result


def test_gen_writes_named_pngs_json_records_and_a_grid(batch_run) -> None:  # noqa: ANN001
    out, result = batch_run
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [f"{k:04d}-{slug}-{40 + k % 5}.png" for k, slug in
                enumerate(["a-green-square"] * 5 + ["a-red-circle"] * 5)]
    assert [Path(r["path"]).name for r in records] == expected
    for k, record in enumerate(records):
        assert record["prompt"] == ("a green square" if k < 5 else "a red circle")
        assert record["seed"] == 40 + k % 5 and record["index"] == k
        assert record["model"] == "tiny-karlo" and record["dalle"] == __version__
        assert record["settings"] == {"prior_steps": 2, "decoder_steps": 2, "sr_steps": 2, "prior_guidance": 4.0,
                                      "decoder_guidance": 8.0, "prior_candidates": 1}
        assert record["seconds"] > 0
        assert read_record(Path(record["path"])) == record  # the PNG carries the same record
        with Image.open(record["path"]) as image:
            assert (image.mode, image.size) == ("RGB", (32, 32))
    assert sorted(files(out)) == sorted(expected + ["grid.png"])  # no temporary files left
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (5 * 32 + 4 * 4, 2 * 32 + 4)  # one row per prompt
        assert np.array_equal(np.asarray(grid)[:32, 36:68], pixels(out / expected[1]))
    assert "images 1-5 of 10: prior done (2 steps)" in result.stderr
    assert "10 images written to" in result.stderr


def test_a_record_remakes_its_image_alone_as_in_a_batch_of_five(batch_run, tiny_karlo: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out, _ = batch_run
    original = out / "0002-a-green-square-42.png"  # made 3rd in a batch of 5
    record = read_record(original)
    result = dalle("gen", "-f", "-", "-m", tiny_karlo, "-o", tmp_path, input=json.dumps(record) + "\n")
    assert result.exit_code == 0, result.output
    (again,) = [Path(line) for line in result.stdout.splitlines()]
    assert again.name == "0000-a-green-square-42.png"
    assert np.array_equal(pixels(again), pixels(original))
    assert not np.array_equal(pixels(out / "0001-a-green-square-41.png"), pixels(original))


def test_skip_existing_resumes_and_nothing_is_overwritten(tiny_karlo: Path, tmp_path: Path) -> None:
    args = ["gen", "a blue square", "-m", tiny_karlo, "--seed", 7, "-n", 3, "--batch-size", 2, "-o", tmp_path, *STEPS]
    assert dalle(*args).exit_code == 0
    names = ["0000-a-blue-square-7.png", "0001-a-blue-square-8.png", "0002-a-blue-square-9.png"]
    assert sorted(files(tmp_path)) == names
    lost = pixels(tmp_path / names[1])
    (tmp_path / names[1]).unlink()  # as if the run had been killed before this image
    kept = {name: (tmp_path / name).read_bytes() for name in (names[0], names[2])}

    resumed = dalle(*args, "--skip-existing")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.splitlines() == [str(tmp_path / names[1])]
    assert "skipping 2 images whose files exist" in resumed.stderr
    assert np.array_equal(pixels(tmp_path / names[1]), lost)
    assert all((tmp_path / name).read_bytes() == data for name, data in kept.items())

    again = dalle("gen", "a blue square", "-m", tiny_karlo, "--seed", 7, "-o", tmp_path, *STEPS)
    assert again.stdout.splitlines() == [str(tmp_path / "0000-a-blue-square-7-1.png")]
    assert (tmp_path / names[0]).read_bytes() == kept[names[0]]
    assert np.array_equal(pixels(tmp_path / "0000-a-blue-square-7-1.png"), pixels(tmp_path / names[0]))


def test_vary_honours_exif_orientation_any_format_and_flattens_alpha(tiny_karlo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    picture.save(tmp_path / "plain.png")
    picture.save(tmp_path / "plain.bmp")
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation 8: the stored pixels must be turned 90° counter-clockwise to stand upright
    picture.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "rotated.png", exif=exif)
    rgba = np.concatenate([rng.integers(0, 256, (30, 40, 3)), rng.integers(0, 256, (30, 40, 1))], axis=2)
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(tmp_path / "alpha.png")
    white = Image.new("RGBA", (40, 30), (255, 255, 255, 255))
    Image.alpha_composite(white, Image.open(tmp_path / "alpha.png")).convert("RGB").save(tmp_path / "flat.png")
    sources = ["plain.png", "rotated.png", "plain.bmp", "alpha.png", "flat.png"]

    out = tmp_path / "out"
    # One image per batch: variations agree across batch sizes only to ~6e-8, which can flip a pixel's rounding.
    result = dalle("vary", *[tmp_path / s for s in sources], "-m", tiny_karlo, "--seed", 3, "--json", "-o", out,
                   "--decoder-steps", 2, "--sr-steps", 2, "--batch-size", 1)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["source"] for r in records] == [str(tmp_path / s) for s in sources]
    for record, source in zip(records, sources, strict=True):
        assert record["source_sha256"] == hashlib.sha256((tmp_path / source).read_bytes()).hexdigest()
        assert record["seed"] == 3 and "prompt" not in record
        assert record["settings"] == {"decoder_steps": 2, "sr_steps": 2, "decoder_guidance": 8.0}
    made = [pixels(Path(r["path"])) for r in records]
    assert np.array_equal(made[0], made[1]) and np.array_equal(made[0], made[2])
    assert np.array_equal(made[3], made[4])
    assert not np.array_equal(made[0], made[3])


def test_quiet_name_template_precision_and_guidance_options(tiny_karlo: Path, tmp_path: Path) -> None:
    result = dalle("gen", "a cat", "-m", tiny_karlo, "--seed", 5, "-n", 2, "--batch-size", 2, "--quiet", "--name",
                   "{model}-{item}-{i}-{seed:05d}", "--device", "cpu", "--dtype", "fp32", "--low-vram",
                   "--prior-guidance", 2, "--decoder-guidance", 3, "-o", tmp_path, *STEPS)
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    names = sorted(files(tmp_path))
    assert names == ["tiny-karlo-0-0-00005.png", "tiny-karlo-0-1-00006.png"]
    settings = read_record(tmp_path / names[0])["settings"]
    assert (settings["prior_guidance"], settings["decoder_guidance"]) == (2.0, 3.0)


def test_a_long_prompt_is_cut_with_a_warning_and_still_made(tiny_karlo: Path, tmp_path: Path) -> None:
    prompt = "a very long prompt about a tiny red circle " * 12
    result = dalle("gen", prompt, "-m", tiny_karlo, "--seed", 1, "-o", tmp_path, *STEPS)
    assert result.exit_code == 0, result.output
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "warning: prompt 'a very long prompt about a tiny red circ...' is longer than 77 tokens; this part is " \
           "cut: '" in warning
    assert warning.rstrip("'").endswith("a tiny red circle")  # the cut part is the end of the prompt
    assert len(list(tmp_path.glob("*.png"))) == 1


def test_cuda_out_of_memory_is_one_line_with_advice(tiny_karlo: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(UnCLIP, "prior", oom)
    result = dalle("gen", "a cat", "-m", tiny_karlo, "-o", tmp_path, *STEPS)
    one_error_line(result, 1, "ran out of memory: try --low-vram or a smaller --batch-size")


def test_a_full_disk_stops_with_one_line_and_no_partial_file(tiny_karlo: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    result = dalle("gen", "a cat", "-m", tiny_karlo, "--seed", 1, "-o", tmp_path, *STEPS)
    one_error_line(result, 1, "the disk is full: could not write")
    assert files(tmp_path) == []


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "empty.txt").write_text("# nothing but a comment\n\n")
    (tmp_path / "bad.txt").write_text('a cat\n# fine\n{"prompt": "a dog", "seed": }\n')
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "not-a-model").mkdir()
    return tmp_path


@pytest.mark.parametrize("args,code,message", [
    (["gen", "a cat", "-m", "no-such-model"], 2, "unknown model 'no-such-model': not a registry alias (karlo"),
    (["gen", "a cat", "-m", "{d}/not-a-model"], 2, "is not a model folder"),
    (["gen", ""], 2, "prompt 1 is empty"),
    (["gen", "a cat", "  "], 2, "prompt 2 is empty"),
    (["gen"], 2, "no prompt: give one or more prompts, or -f FILE"),
    (["gen", "-f", "{d}/empty.txt"], 2, "empty.txt holds no prompts"),
    (["gen", "-f", "{d}/bad.txt"], 2, "bad.txt:3: invalid JSON"),
    (["gen", "-f", "{d}/missing.txt"], 2, "cannot read the prompt file"),
    (["gen", "a cat", "-o", "{d}/a-file"], 2, "cannot write to the output directory"),
    (["gen", "a cat", "-o", "{d}/a-file/sub"], 2, "cannot write to the output directory"),
    (["gen", "a cat", "--prior-steps", "1", "-m", "{model}"], 2, "prior_steps must be an integer from 2 to 1000"),
    (["gen", "a cat", "--decoder-guidance", "0.5", "-m", "{model}"], 2, "decoder_guidance must be a number of at"),
    (["gen", "a cat", "--name", "{prompt}"], 2, "--name: unknown field {prompt}"),
    (["vary", "{d}/notes.txt"], 2, "cannot read image"),
    (["vary", "{d}/missing.png"], 2, "cannot read image"),
])
def test_bad_input_is_one_error_line(inputs: Path, tiny_karlo: Path, args: list[str], code: int,
                                     message: str) -> None:
    args = [a.format(d=inputs, model=tiny_karlo) if "{d}" in a or "{model}" in a else a for a in args]
    one_error_line(dalle(*args, "-o", inputs / "out") if "-o" not in args else dalle(*args), code, message)


@pytest.mark.parametrize("args", [["gen", "a", "--seed", "-1"], ["gen", "a", "--device", "tpu"],
                                  ["gen", "a", "--dtype", "fp8"], ["gen", "a", "-n", "0"], ["vary"],
                                  ["gen", "a", "--batch-size", "0"], ["nonsense"]])
def test_bad_options_exit_2(args: list[str]) -> None:
    assert dalle(*args).exit_code == 2


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = dalle("gen", "a cat", "-m", "no-such-model", "--debug", "-o", tmp_path)
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and result.stderr.strip().endswith("or a local folder")


def test_models_lists_the_registry_with_what_is_on_disk(tiny_karlo: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": {
        "here": {"path": str(tiny_karlo), "size_bytes": 123, "size_exact": True, "license": "mit"},
        "away": {"repo_id": "nobody/nothing", "revision": "0" * 40, "files": ["*.safetensors"],
                 "size_bytes": 13_690_000_000, "license": "other"},
    }}))
    result = dalle("models", env={"DALLE_REGISTRY": str(registry)})
    assert result.exit_code == 0, result.output
    here = next(line for line in result.stdout.splitlines() if line.startswith("here"))
    away = next(line for line in result.stdout.splitlines() if line.startswith("away"))
    # A local folder's size is read from the disk (its registry size_bytes is not trusted), a hub model's from the
    # registry.
    on_disk = format_size(sum(p.stat().st_size for p in tiny_karlo.rglob("*") if p.is_file()))
    assert f"{on_disk} yes ({on_disk})" in " ".join(here.split()) and "123 B" not in here and "no" in away \
        and "~13.7 GB" in away
    rows = [json.loads(line) for line in dalle("models", "--json", env={"DALLE_REGISTRY": str(registry)}).stdout
            .splitlines()]
    assert [(r["name"], r["state"]) for r in rows] == [("here", "downloaded"), ("away", "missing")]
    assert rows[0]["on_disk_bytes"] == sum(p.stat().st_size for p in tiny_karlo.rglob("*") if p.is_file())


def test_info_reports_versions_devices_and_cache() -> None:
    result = dalle("info")
    assert result.exit_code == 0
    for key in ("dalle", "python", "torch", "huggingface_hub", "cuda", "hub cache", "registry"):
        assert any(line.startswith(key) for line in result.stdout.splitlines()), key
    facts = json.loads(dalle("info", "--json").stdout)
    assert facts["torch"] == torch.__version__ and facts["dalle"] == __version__


def test_progress_on_a_terminal_shows_stage_step_images_and_eta() -> None:
    display = Display()
    display.err = Console(file=io.StringIO(), force_terminal=True, width=120)
    with display.progress(images=4, steps=12) as meter:
        report = meter.batch([object(), object()])
        for step in (1, 2):
            report(Progress("decoder", step, 2, 0, 2, 2))
        meter.finished([object(), object()])
    shown = display.err.file.getvalue()
    assert "decoder 2/2 · images 1-2 of 4" in shown and "ETA" in shown
