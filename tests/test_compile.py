"""`--compile` (`Model.compile`): compiled networks make the eager networks' images, parts loaded later compile too,
and what cannot compile says so in one line. Its speed and compile time are benchmarks/pipeline_speed.py's."""

from pathlib import Path

import pytest
import torch

import dalle_cli
from dalle_cli.errors import CompileError, UsageError
from test_cli import dalle, one_error_line


def test_compiled_networks_make_the_eager_images() -> None:
    """TorchInductor's code gives the eager images to float rounding (the issue's 1e-4 of identical output)."""
    eager = dalle_cli.load("shapes", device="cpu")
    s = eager.defaults.updated({"prior_steps": 3, "decoder_steps": 3, "sr_steps": 2}, "t")
    prompts, seeds = ["a red circle", "a blue square to the left of a green triangle"], [3, 4]
    expected = eager.generate_tensors(prompts, seeds, s)
    compiled = dalle_cli.load("shapes", device="cpu", compile=True)
    assert compiled.compiled and not eager.compiled
    got = compiled.generate_tensors(prompts, seeds, s)
    assert all(getattr(m, "_compiled_call_impl", None) is not None
               for m in vars(compiled.parts).values() if isinstance(m, torch.nn.Module))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def failing_backend(graph: torch.fx.GraphModule, inputs: list) -> None:
    raise RuntimeError("no C++ compiler here\nsecond line")


@pytest.fixture
def failing_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Module.compile` with a backend that fails, as TorchInductor does without a working C++ compiler."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compile_module(self, backend=failing_backend))
    yield
    torch._dynamo.reset()


def test_a_part_loaded_later_compiles_when_first_used(failing_compile: None, tiny_karlo: Path) -> None:
    """Karlo's image encoder, loaded after `compile` for the first variation, compiles at its first call (here
    with a backend that fails, so the call says so)."""
    from PIL import Image

    model = dalle_cli.load(tiny_karlo, device="cpu")
    encoder, model.parts.image_encoder = model.parts.image_encoder, None  # a hub model's, before its download
    model.compile()
    model.parts.image_encoder = encoder  # as `prepare("vary")` places it once downloaded
    with pytest.raises(CompileError, match="^torch.compile could not compile a network: no C\\+\\+ compiler here$"):
        model.encode_image([Image.new("RGB", (64, 64), "white")])
    assert encoder._compiled_call_impl is not None


def test_a_failed_compile_is_one_line(failing_compile: None, tmp_path: Path) -> None:
    result = dalle("gen", "a red circle", "-m", "shapes", "--compile", "--out", tmp_path)
    one_error_line(result, 1, "torch.compile could not compile a network: no C++ compiler here")
    assert "compiling the networks" in result.stderr


def test_compile_refuses_the_modes_that_move_weights(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot compile"):
        dalle_cli.load("shapes", device="cpu", low_memory=True, compile=True)
    result = dalle("gen", "a red circle", "-m", "shapes", "--compile", "--low-memory", "--out", tmp_path)
    one_error_line(result, 2, "low-VRAM and low-memory modes cannot compile")
    assert not list(tmp_path.glob("*.png"))
