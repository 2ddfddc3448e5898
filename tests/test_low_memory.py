"""Low-memory mode: networks wait in their files and only the running stage holds its weights, with the same images;
`dalle gen` uses it for a run of one batch on the CPU."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import dalle_cli
from dalle_cli.checkpoint import is_empty
from dalle_cli.errors import CheckpointError, UsageError
from test_cli import dalle, one_error_line
from test_kandinsky import monkeypatch_module  # noqa: F401  (a fixture: the zero embeddings' cache)

SHAPES = Path(__file__).resolve().parent.parent / "weights" / "shapes"
FEW = {"prior_steps": 3, "decoder_steps": 3, "sr_steps": 3}


def test_low_memory_makes_the_same_images_and_frees_every_network_between_calls() -> None:
    eager = dalle_cli.load("shapes", device="cpu")
    lean = dalle_cli.load("shapes", device="cpu", low_memory=True)
    networks = lean.parts.modules()
    assert networks and all(is_empty(m) for m in networks)  # nothing is read at load
    s = eager.defaults.updated(FEW, "test")
    prompts, seeds = ["a red circle", "a blue square to the left of a green triangle"], [1, 2]
    assert torch.equal(lean.generate_tensors(prompts, seeds, s), eager.generate_tensors(prompts, seeds, s))
    assert all(is_empty(m) for m in networks)  # and nothing is held after a call
    pictures = eager.generate(prompts[:1], seeds[:1], s)
    torch.testing.assert_close(lean.vary_tensors(pictures, [3], s), eager.vary_tensors(pictures, [3], s),
                               rtol=0, atol=0)
    assert all(is_empty(m) for m in lean.parts.modules())  # the image encoder too, read on first use


def test_kandinsky_low_memory_makes_the_same_images(tiny_kandinsky: tuple[Path, Path],
                                                    monkeypatch_module: pytest.MonkeyPatch) -> None:  # noqa: F811
    prior, decoder = tiny_kandinsky
    made = []
    for low_memory in (False, True):
        model = dalle_cli.load(str(decoder), device="cpu", parts={"prior": str(prior)}, low_memory=low_memory)
        s = model.defaults.updated({"prior_steps": 3, "decoder_steps": 3, "width": 64, "height": 64}, "test")
        made.append(model.generate_tensors(["a cat", "a dog"], [4, 5], s))
    assert torch.equal(*made)


def test_a_checkpoint_that_does_not_fit_is_refused_at_load_in_low_memory_mode(tmp_path: Path) -> None:
    folder = tmp_path / "shapes"
    shutil.copytree(SHAPES, folder)
    config = json.loads((folder / "decoder" / "config.json").read_text())
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    (folder / "decoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="decoder: tensor .* has shape"):
        dalle_cli.load(str(folder), device="cpu", low_memory=True)


def test_low_memory_and_low_vram_exclude_each_other() -> None:
    with pytest.raises(UsageError, match="exclude each other"):
        dalle_cli.load("shapes", device="cpu", low_memory=True, low_vram=True)
    one_error_line(dalle("gen", "a red circle", "-m", "shapes", "--low-memory", "--low-vram"), 2, "exclude each other")


@pytest.mark.parametrize(("args", "expected"), [([], True), (["-n", "2", "--batch-size", "1"], False),
                                                (["-n", "2", "--batch-size", "1", "--low-memory"], True)])
def test_gen_runs_a_single_batch_on_the_cpu_in_low_memory_mode(args: list[str], expected: bool, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import dalle_cli.cli.runs as runs

    modes = []

    def recording_load(*a, **options):  # noqa: ANN002, ANN003, ANN202
        modes.append(options["low_memory"])
        return dalle_cli.load(*a, **options)

    monkeypatch.setattr(runs, "load", recording_load)
    made = dalle("gen", "a red circle", "-m", "shapes", "--device", "cpu", *args, "--prior-steps", "2",
                 "--decoder-steps", "2", "--sr-steps", "2", "-o", tmp_path, "-q")
    assert made.exit_code == 0, made.output
    assert modes == [expected]
