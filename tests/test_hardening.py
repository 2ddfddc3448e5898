"""The hardening issue's rules, each checked where a user meets it (the CLI, in process or in a subprocess), beyond
the instance that was reported: resuming every kind of run, planning that streams, records that make their image
again, file names checked up front, clean output folders, and one-line messages."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import dalle_cli.cli.runs as runs
from dalle_cli.cli import app
from dalle_cli.cli.batch import Job, Planner, Prompt, batches, chosen, read_prompt_file
from dalle_cli.cli.outputs import read_record, write_png
from dalle_cli.families.unclip.settings import UnCLIPSettings
from dalle_cli.sources import locate

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2"]
VARY_STEPS = ["--decoder-steps", "2", "--sr-steps", "2"]


def dalle(*args: object, input: str | None = None, env: dict[str, str] | None = None):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env)


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def one_error(result, code: int) -> str:  # noqa: ANN001
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]) and "Traceback" not in result.output
    return errors[0]


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for k in range(2):
        path = tmp_path / f"picture{k}.png"
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _inputs(kind: str, folder: Path, pictures: list[Path]) -> list[str]:
    if kind == "arguments":
        return ["gen", "a red circle", "a cat"]
    if kind == "text file":
        (folder / "prompts.txt").write_text("a red circle\n# a comment\na cat\n")
        return ["gen", "-f", str(folder / "prompts.txt")]
    if kind == "jsonl file":
        (folder / "prompts.jsonl").write_text('{"prompt": "a red circle", "n": 2}\n{"prompt": "a cat", "seed": 40}\n')
        return ["gen", "-f", str(folder / "prompts.jsonl")]
    return ["vary", *map(str, pictures)]


@pytest.mark.parametrize("seed", [[], ["--seed", "11"]], ids=["random seed", "--seed"])
@pytest.mark.parametrize("kind", ["arguments", "text file", "jsonl file", "vary"])
def test_running_the_same_command_again_finishes_a_killed_run(kind: str, seed: list[str], tiny_karlo: Path,
                                                               tmp_path: Path, pictures: list[Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    steps = VARY_STEPS if kind == "vary" else STEPS
    args = [*_inputs(kind, tmp_path, pictures), "-m", tiny_karlo, "-n", "2", "--batch-size", "1", "-o", out,
            *seed, *steps]
    written = {"count": 0}
    real = runs.write_png

    def killed_after_two(*a: object, **k: object) -> Path:
        if written["count"] == 2:
            raise KeyboardInterrupt
        written["count"] += 1
        return real(*a, **k)

    monkeypatch.setattr(runs, "write_png", killed_after_two)
    assert dalle(*args).exit_code == 130
    monkeypatch.setattr(runs, "write_png", real)
    before = pngs(out)
    assert len(before) == 2

    resumed = dalle(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming an interrupted run" in resumed.stderr
    after = pngs(out)
    assert len(after) == 4 and not [name for name in after if name.endswith("-1.png")]  # each image made once
    assert all(after[name] == data for name, data in before.items())  # the finished ones are untouched
    # The four images are those of one run: one base seed b, image i of an item with b + i (or the line's own seed).
    seeds = [read_record(out / name)["seed"] for name in sorted(after)]
    b = seeds[0]
    assert seeds == ([b, b + 1, 40, 41] if kind == "jsonl file" else [b, b + 1, b, b + 1])
    if seed:
        assert b == 11


def test_skip_existing_after_a_finished_run_without_seed_makes_nothing(tiny_karlo: Path, tmp_path: Path) -> None:
    args = ["gen", "a cat", "-m", tiny_karlo, "-n", "2", "-o", tmp_path, *STEPS]
    assert dalle(*args).exit_code == 0
    again = dalle(*args, "--skip-existing")
    assert again.exit_code == 0 and again.stdout == ""
    assert "skipping 2 images whose files exist" in again.stderr and len(pngs(tmp_path)) == 2
    third = dalle(*args)  # without --skip-existing a finished run is a new run: new seed, new images
    assert third.exit_code == 0 and len(pngs(tmp_path)) == 4


def test_planning_streams_the_items() -> None:
    """Items and jobs are made as they are needed: an endless stream of prompts gives its first batch at once."""
    karlo = locate("karlo")
    planner = Planner("{index}-{slug}", 3, 0, lambda item: ("karlo", karlo), lambda spec, op: UnCLIPSettings())
    endless = (Prompt(f"prompt {k}", f"line {k}") for k in itertools.count())
    first = next(batches(planner.jobs(endless), 4))
    assert [job.index for job in first] == [0, 1, 2, 3] and first[3].prompt == "prompt 1"


def test_a_prompt_file_is_read_as_it_is_needed(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a cat\na dog\n{not json\n")
    items = read_prompt_file(tmp_path / "p.txt", "p.txt")
    assert [next(items).text, next(items).text] == ["a cat", "a dog"]  # line 3 is not read yet


@pytest.mark.parametrize("args,message", [
    (["gen", "a", "-n", "10001"], "--num"),
    (["gen", "a", "--seed", str(2**63)], "--seed"),
])
def test_cli_limits_are_those_of_prompt_lines(args: list[str], message: str) -> None:
    assert message in one_error(dalle(*args), 2)


def test_a_record_line_makes_its_image_again_with_its_own_model(tiny_karlo: Path, tmp_path: Path,
                                                                 pictures: list[Path]) -> None:
    made = dalle("gen", "a green square", "-m", tiny_karlo, "--seed", 5, "--grid", "-n", 2, "-o", tmp_path / "a",
                 *STEPS)
    varied = dalle("vary", pictures[0], "-m", tiny_karlo, "--seed", 6, "-o", tmp_path / "a", *VARY_STEPS)
    assert made.exit_code == 0 and varied.exit_code == 0, made.output + varied.output
    originals = pngs(tmp_path / "a")
    lines = [read_record(tmp_path / "a" / name) for name in originals]
    grid = next(r for r in lines if "grid" in r)
    env = {"HF_HUB_OFFLINE": "1", "DALLE_MODEL": "karlo"}  # karlo is not downloaded: the records must not need it
    for k, line in enumerate(r for r in lines if "grid" not in r):
        again = dalle("gen", "-f", "-", "-o", tmp_path / f"b{k}", input=json.dumps(line) + "\n", env=env)
        assert again.exit_code == 0, again.output
        (path,) = [Path(p) for p in again.stdout.split()]
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(line["path"])))
    sheet = dalle("gen", "-f", "-", "-o", tmp_path / "c", input=json.dumps(grid) + "\n", env=env)
    assert sheet.exit_code == 0, sheet.output
    assert len(sheet.stdout.split()) == 2  # the two images the contact sheet shows


def test_file_names_are_checked_before_any_model_loads(tmp_path: Path) -> None:
    out = tmp_path / "out"
    long = "x" * 250 + "{index}"
    line = one_error(dalle("gen", "a", "-m", "karlo", "--offline", "--name", long, "-o", out), 2)
    assert "bytes; this folder allows" in line  # not "karlo is not downloaded"
    line = one_error(dalle("gen", "a", "--name", "{index:99999999999d}", "-o", out), 2)
    assert "too wide" in line or "Too many" in line
    assert not out.exists()


def test_a_write_that_fails_reports_its_own_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(36, "File name too long")

    def no_write(*args: object, **kwargs: object) -> None:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", no_unlink)
    monkeypatch.setattr(Image.Image, "save", no_write)
    with pytest.raises(Exception, match="Permission denied"):
        write_png(Image.new("RGB", (4, 4)), tmp_path / "a.png", {})


def test_the_progress_total_counts_every_event(tiny_karlo: Path, tmp_path: Path) -> None:
    """Batches of 4: the bar's total must equal the events the engine sends (it was a quarter of them)."""
    from contextlib import contextmanager

    seen = {"events": 0}

    class Observer:
        def batch(self, jobs):  # noqa: ANN001, ANN201
            return lambda event: seen.__setitem__("events", seen["events"] + 1)

        def image(self, entry):  # noqa: ANN001, ANN201
            pass

        def finished(self, jobs):  # noqa: ANN001, ANN201
            pass

    class Reporter:
        def note(self, message):  # noqa: ANN001, ANN201
            pass

        warn = note

        @contextmanager
        def progress(self, images, steps):  # noqa: ANN001, ANN201
            seen["total"], seen["images"] = steps, images
            yield Observer()

    models = runs.Models(str(tiny_karlo), "karlo", {"prior_steps": 2, "decoder_steps": 3, "sr_steps": 2}, False,
                         {"device": "cpu"}, lambda m: None, chosen)
    items = [Prompt("a cat", "a", n=5), Prompt("a dog", "b", n=3)]
    request = runs.Request(lambda: items, {"x": 1}, models, tmp_path, "{index}", 1, 1, 4)
    runs.execute(request, Reporter(), runs.Tally())
    # Two batches (4 cats; a cat and 3 dogs) of 2 + 3 + 2 events each.
    assert seen["images"] == 8 and seen["total"] == seen["events"] == 2 * 7


def test_vary_decodes_its_inputs_batch_by_batch(tiny_karlo: Path, tmp_path: Path, pictures: list[Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    events = []
    real_load, real_write = runs.load_image, runs.write_png
    monkeypatch.setattr(runs, "load_image", lambda path: events.append(("decode", Path(path).name)) or real_load(path))
    monkeypatch.setattr(runs, "write_png", lambda *a, **k: events.append(("write", "")) or real_write(*a, **k))
    result = dalle("vary", *pictures, "-m", tiny_karlo, "--batch-size", 1, "-o", tmp_path / "o", *VARY_STEPS)
    assert result.exit_code == 0, result.output
    assert [kind for kind, _ in events] == ["decode", "write", "decode", "write"]


def test_no_numpy_warning_without_numpy(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['numpy'] = None\n"
            "from dalle_cli.cli import main\n"
            f"sys.argv = ['dalle', 'gen', 'a cat', '-m', 'shapes', '--seed', '1', '--quiet', '-o', {str(tmp_path)!r},"
            " '--prior-steps', '2', '--decoder-steps', '2', '--sr-steps', '2']\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert len(pngs(tmp_path)) == 1


SETTINGS = [("prior_steps", "steps"), ("decoder_steps", "steps"), ("sr_steps", "steps"),
            ("prior_guidance", "guidance"), ("decoder_guidance", "guidance")]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name,kind", SETTINGS)
def test_infinite_and_nan_settings_are_refused_everywhere(name: str, kind: str, value: float, tiny_karlo: Path,
                                                          tmp_path: Path) -> None:
    flag = "--" + name.replace("_", "-")
    line = one_error(dalle("gen", "a cat", "-m", tiny_karlo, flag, str(value), "-o", tmp_path / "a"), 2)
    assert flag in line or name in line
    jsonl = json.dumps({"prompt": "a cat", name: value})  # Python writes Infinity and NaN, which JSON readers take
    line = one_error(dalle("gen", "-f", "-", "-m", tiny_karlo, "-o", tmp_path / "b", input=jsonl + "\n"), 2)
    assert f"stdin:1: {name} must be" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_leftovers_of_killed_runs_are_removed_and_a_live_runs_are_kept(tiny_karlo: Path, tmp_path: Path) -> None:
    dead = tmp_path / ".0000-a-cat-1.png.4194303.tmp"  # no process has this pid (the largest Linux allows, less 1)
    live = tmp_path / f".0000-a-cat-1.png.{os.getppid()}.tmp"
    dead.write_bytes(b"")
    live.write_bytes(b"")
    result = dalle("gen", "a cat", "-m", tiny_karlo, "--seed", 1, "-o", tmp_path, *STEPS)
    assert result.exit_code == 0 and "removed 1 temporary file left by killed runs" in result.stderr
    assert not dead.exists() and live.exists()


def test_a_damaged_file_is_kept_aside_and_made_again(tiny_karlo: Path, tmp_path: Path) -> None:
    args = ["gen", "a cat", "-m", tiny_karlo, "--seed", 1, "-n", 2, "--grid", "-o", tmp_path, *STEPS]
    assert dalle(*args).exit_code == 0
    whole = np.asarray(Image.open(tmp_path / "0001-a-cat-2.png"))
    (tmp_path / "0001-a-cat-2.png").write_bytes(b"")  # as a kill during a copy would leave it
    resumed = dalle(*args, "--skip-existing")
    assert resumed.exit_code == 0, resumed.output
    assert "is damaged (not a whole PNG): kept as" in resumed.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "0001-a-cat-2.png")), whole)  # the same image again
    assert (tmp_path / "0001-a-cat-2.png.damaged").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.glob("grid*.png")) == ["grid.png"]  # the run's one sheet, remade


@pytest.mark.parametrize("args", [["--prior-steps", "1"], ["-m", "nothing-here"], ["--offline", "-m", "karlo"]])
def test_a_refused_run_leaves_no_output_folder(args: list[str], tmp_path: Path) -> None:
    result = dalle("gen", "a cat", *args, "-o", tmp_path / "out")
    assert result.exit_code in (1, 2) and not (tmp_path / "out").exists(), result.output


def test_click_usage_errors_are_one_line() -> None:
    for args in (["gen", "a", "--bogus"], ["gen", "a", "-n", "zero"], ["nonsense"], ["vary"]):
        line = one_error(dalle(*args), 2)
        assert "--help" in line


def test_pull_offline_checks_without_the_network(tmp_path: Path) -> None:
    line = one_error(dalle("pull", "karlo", "--offline", env={"HF_HOME": str(tmp_path)}), 1)
    assert "karlo is not downloaded and dalle is offline" in line
    assert dalle("pull", "shapes", "--offline").exit_code == 0


def test_the_small_messages(tiny_karlo: Path, tmp_path: Path) -> None:
    own = '{"prompt": "a cat", "seed": 3}\n{"prompt": "a dog", "seed": 4}\n'
    result = dalle("gen", "-f", "-", "-m", tiny_karlo, "-o", tmp_path / "a", *STEPS, input=own)
    assert result.exit_code == 0 and "random" not in result.stderr  # every line has its own seed
    result = dalle("gen", "a cat", "-m", tiny_karlo, "--seed", 1, "-o", tmp_path / "b", *STEPS)
    assert result.stderr.strip().endswith(f"1 image written to {tmp_path / 'b'}")
    line = one_error(dalle("gen", "a", "--seed", str(2**63 - 1), "-n", "2", "-m", tiny_karlo), 2)
    assert f"--seed {2**63 - 1} with 2 images needs seeds up to {2**63}, past the largest seed" in line


def test_an_unreadable_weights_file_says_why(tiny_karlo: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_karlo, folder)
    weights = folder / "decoder" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    weights.symlink_to(tmp_path / "blobs" / "gone")
    line = one_error(dalle("gen", "a", "-m", folder, "-o", tmp_path / "o"), 1)
    assert "decoder: diffusion_pytorch_model.safetensors is a link to" in line and "which is missing" in line


def test_debug_does_not_advise_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dalle_cli.cli.display import describe

    assert "run again with --debug" in describe(RuntimeError("x"))
    assert "--debug" not in describe(RuntimeError("x"), debug=True)


def test_job_batch_key_groups_model_operation_and_settings() -> None:
    a = Job(0, 0, 0, 1, UnCLIPSettings(), "a.png", "karlo", "generate", prompt="x")
    b = Job(1, 0, 1, 2, UnCLIPSettings(), "b.png", "shapes", "generate", prompt="x")
    assert [len(batch) for batch in batches([a, b], 4)] == [1, 1]
