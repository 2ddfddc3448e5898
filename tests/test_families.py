"""The family seam: settings declared once per family, model folders that carry their own family and defaults, the
public stages, thread safety, and a library that speaks its own vocabulary."""

import ast
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import dalle_cli
from dalle_cli.cli.commands import make_app
from dalle_cli.cli.outputs import read_record
from dalle_cli.engine.noise import ImageNoise
from dalle_cli.families import UNCLIP
from dalle_cli.families.unclip.components import load_components
from dalle_cli.families.unclip.pipeline import UnCLIP
from dalle_cli.families.unclip.settings import UnCLIPSettings
from dalle_cli.sources import locate

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
STEPS = ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2"]


@pytest.fixture(scope="module")
def model(tiny_karlo: Path) -> UnCLIP:
    return dalle_cli.load(str(tiny_karlo), device="cpu")


def test_a_shipped_folder_samples_as_its_registry_alias(tmp_path: Path) -> None:
    """`-m weights/shapes` is the registry's `shapes`: its defaults, its name, the same image for the same seed."""
    runner = CliRunner()
    made = {}
    for spec in ("shapes", str(ROOT / "weights" / "shapes")):
        out = tmp_path / str(len(made))
        result = runner.invoke(make_app(), ["gen", "a red circle", "-m", spec, "--seed", "4", "-o", str(out)])
        assert result.exit_code == 0, result.output
        made[spec] = Path(result.stdout.strip())
    first, second = made.values()
    assert first.name == second.name
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert read_record(first)["settings"] == read_record(second)["settings"] == {
        "prior_steps": 15, "decoder_steps": 15, "sr_steps": 7, "prior_guidance": 2.0, "decoder_guidance": 2.0,
        "prior_candidates": 1}


def test_a_folder_carries_its_family_and_defaults_in_dalle_json(tiny_karlo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "own"
    shutil.copytree(tiny_karlo, folder)
    assert locate(str(folder)).defaults == UnCLIPSettings()  # no dalle.json: the family's defaults
    (folder / "dalle.json").write_text(json.dumps({"family": "unclip", "defaults": {"decoder_steps": 3}}))
    source = locate(str(folder))
    assert source.family is UNCLIP and source.defaults == UnCLIPSettings(decoder_steps=3)

    runner = CliRunner()
    (folder / "dalle.json").write_text(json.dumps({"family": "dalle-3"}))
    result = runner.invoke(make_app(), ["gen", "a cat", "-m", str(folder), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown model family 'dalle-3'" in result.stderr
    (folder / "dalle.json").unlink()
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    result = runner.invoke(make_app(), ["gen", "a cat", "-m", str(folder), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "dalle cannot run a StableDiffusionPipeline" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_setting_of_another_family_is_a_usage_error_naming_the_model(tiny_karlo: Path, tmp_path: Path) -> None:
    """--help shows each family's own options with the families they apply to; giving one, or a prompt line setting
    it, for a model of another family is exit 2 with a message naming the model."""
    runner = CliRunner()
    shown = " ".join(runner.invoke(make_app(), ["gen", "--help"]).stdout.split())
    assert "--sr-steps <int> Super-resolution steps. Only unCLIP (Karlo) models." in shown
    assert "--width <int> Image width in pixels, a multiple of 64. Only Kandinsky 2.2 models." in shown
    assert "Only" not in shown.split("--prior-steps")[1].split("--sr-steps")[0]  # every family has prior/decoder steps
    assert "--prior <str> The prior the model runs with" in shown and "Only Kandinsky 2.2 models." in shown

    result = runner.invoke(make_app(), ["gen", "a cat", "-m", str(tiny_karlo), "--width", "512", "-o", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "error: options: --width is not a setting of tiny-karlo for generate (unCLIP (Karlo) models have " \
           "--prior-steps" in result.stderr
    line = json.dumps({"prompt": "a cat", "width": 512})
    result = runner.invoke(make_app(), ["gen", "-f", "-", "-m", str(tiny_karlo), "-o", str(tmp_path)],
                           input=line + "\n")
    assert result.exit_code == 2 and "error: stdin:1: width is not a setting of tiny-karlo" in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before the output folder was made or any model loaded


def test_settings_are_checked_against_the_operation() -> None:
    """A variation runs no prior, so its records and its options leave the prior's settings out."""
    assert UNCLIP.applies("prior_steps", "generate") and not UNCLIP.applies("prior_steps", "vary")
    assert UnCLIPSettings().used("vary", UNCLIP.operations["vary"]) == {"decoder_steps": 25, "sr_steps": 7,
                                                               "decoder_guidance": 8.0}
    assert UNCLIP.events("generate", UnCLIPSettings(3, 4, 5)) == 12 and UNCLIP.events("vary", UnCLIPSettings()) == 33
    with pytest.raises(dalle_cli.DalleError, match="x: decoder_guidance must be a finite number, got inf"):
        UnCLIPSettings().updated({"decoder_guidance": float("inf")}, "x")
    shown = CliRunner().invoke(make_app(), ["vary", "--help"]).stdout
    assert "--decoder-steps" in shown and "--prior-steps" not in shown


def test_the_inversion_guidance_is_the_decoders_unless_set_and_read_only_by_what_inverts() -> None:
    """`inversion_guidance` (None: the decoder's) guides inversions and their decodings: `for_inversion` hands
    the decoder that scale. Variations, interpolations and text diffs take it; a record holds it only when the
    operation inverts, and it does not make a variation without η invert."""
    plain, set_ = UnCLIPSettings(), UnCLIPSettings(inversion_guidance=1.5)
    assert plain.for_inversion() == plain and set_.for_inversion().decoder_guidance == 1.5
    assert set_.for_inversion().for_inversion() == set_.for_inversion()  # applied twice, the same settings
    assert plain.updated({"inversion_guidance": None}, "x") == plain
    with pytest.raises(dalle_cli.DalleError, match="x: inversion_guidance must be a number of at least 1"):
        plain.updated({"inversion_guidance": 0.5}, "x")
    for operation in ("vary", "interpolate", "text_diff"):
        assert UNCLIP.applies("inversion_guidance", operation)
    assert not UNCLIP.applies("inversion_guidance", "generate") and not UNCLIP.applies("inversion_guidance", "edit")
    stages = UNCLIP.operations["vary"]
    assert set_.used("vary", stages)["inversion_guidance"] == 1.5
    assert "inversion_guidance" not in set_.used("vary", stages, inverting=False)
    assert "inversion_guidance" not in plain.used("vary", stages)  # unset: records stay as they were
    assert UNCLIP.events("vary", set_) == UNCLIP.events("vary", plain) == 33  # no η: no inversion steps
    shown = CliRunner().invoke(make_app(), ["gen", "--help"]).stdout
    assert "--inversion-guidance" not in shown


def test_the_public_stages_compose_generate_and_vary(model: UnCLIP) -> None:
    prompts, seeds, settings = ["a red circle", "a cat"], [3, 4], UnCLIPSettings(2, 3, 2)
    noise = ImageNoise(seeds)
    text = model.encode_text(prompts, guided=True)
    embeds = model.prior(text, noise, settings)
    assert embeds.shape == (2, model.parts.prior.config.embedding_dim)
    x_T = noise.start((3, 16, 16), torch.float32, CPU)  # the decoder's start, drawn where decode would draw it
    small = model.decode(embeds, text, noise, settings, x_T=x_T)
    assert small.shape == (2, 3, 16, 16)
    composed = model.upscale(small, noise, settings)
    assert torch.equal(composed, model.generate_tensors(prompts, seeds, settings))

    pictures = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 20), "blue")]
    noise = ImageNoise(seeds)
    z = model.encode_image(pictures)
    text = model.encode_text(["", ""], guided=True)
    composed = model.upscale(model.decode(z, text, noise, settings), noise, settings)
    assert torch.equal(composed, model.vary_tensors(pictures, seeds, settings))


# A device that compares unequal to the CPU but computes on it, standing in for a GPU (see test_pipeline.py).
ACCELERATOR = torch.device("cpu", 0)


@pytest.mark.parametrize("low_vram", [False, True])
def test_two_threads_share_one_loaded_model(tiny_karlo: Path, model: UnCLIP, low_vram: bool) -> None:
    """A server calls one model from several threads: each call gets exactly the images it gets from one thread.
    (On the stand-in device a batch of one can differ from the plain CPU in the last bit, since its weights are
    copies with other alignments, so the calls alone are made with the same model.)"""
    shared = UnCLIP(load_components(tiny_karlo, torch.float32, CPU), model.info, model.defaults,
                    ACCELERATOR if low_vram else CPU, torch.float32, low_vram=low_vram)
    settings = UnCLIPSettings(2, 3, 2)
    calls = {"a": (["a red circle", "a cat"], [1, 2]), "b": (["a blue square"], [3]), "c": (["a dog", "a"], [4, 5])}
    alone = {key: shared.generate_tensors(prompts, seeds, settings) for key, (prompts, seeds) in calls.items()}
    together: dict[str, torch.Tensor] = {}
    start = threading.Barrier(len(calls))

    def call(key: str) -> None:
        start.wait()
        together[key] = shared.generate_tensors(*calls[key], settings)

    threads = [threading.Thread(target=call, args=(key,)) for key in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(together) == set(calls)
    for key in calls:
        assert torch.equal(together[key], alone[key]), key


def test_building_without_initialisation_leaves_other_threads_alone() -> None:
    """Modules are built for loading without running torch.nn.init, through a thread-local torch function mode, so
    another thread initialising a module meanwhile still gets random values."""
    from dalle_cli.checkpoint import _SkipInitialization

    inside, outside = threading.Event(), threading.Event()
    seen: dict[str, torch.Tensor] = {}

    def build() -> None:
        with _SkipInitialization():
            inside.set()
            outside.wait()
            seen["skipped"] = torch.nn.init.normal_(torch.zeros(4))

    thread = threading.Thread(target=build)
    thread.start()
    inside.wait()
    seen["other"] = torch.nn.init.normal_(torch.zeros(4))
    outside.set()
    thread.join()
    assert torch.equal(seen["skipped"], torch.zeros(4)) and not torch.equal(seen["other"], torch.zeros(4))


def test_the_library_names_no_cli_flag_or_command() -> None:
    """Messages outside dalle_cli/cli/ speak the library's vocabulary: advice for CLI users comes from the CLI,
    which turns each error's hint into its flags (dalle_cli.cli.display.ADVICE)."""
    library = [p for p in (ROOT / "dalle_cli").rglob("*.py") if "cli" not in p.relative_to(ROOT / "dalle_cli").parts[:1]]
    assert len(library) > 20
    offending = []
    for path in library:
        body = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(body)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(body):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
                if " --" in f" {text}" and any(c.isalpha() for c in text.split("--", 1)[1][:1]) or "`dalle " in text:
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    assert not offending, offending


def test_every_hint_has_advice_in_the_cli() -> None:
    from dalle_cli.cli.display import ADVICE, describe
    from dalle_cli.errors import HINTS, DownloadError

    assert set(ADVICE) == set(HINTS)
    error = DownloadError("tiny is not downloaded and dalle is offline", hint="pull", model="tiny")
    assert describe(error) == ("tiny is not downloaded and dalle is offline; run `dalle pull tiny` with a network "
                               "connection first")
