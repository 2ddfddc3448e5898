"""The wheel users install: it holds the inference code and the shipped weights, and no training code.

The wheel is built offline from a copy of the checkout (so the build's `build/` and `*.egg-info` stay out of the
tree), with the build backend of this environment, as `pip wheel --no-build-isolation` builds it.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a checkout holds besides its sources: never part of a build's input.
NOT_SOURCES = (".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Every file of the project's wheel: its path in the archive -> its bytes."""
    work = tmp_path_factory.mktemp("wheel")
    source, dist = work / "source", work / "dist"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--wheel-dir", str(dist)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_wheel_holds_no_training_code(wheel_files: dict[str, bytes]) -> None:
    """The recipes stay in the checkout: no `recipes/` module and no file named train* anywhere in the wheel."""
    assert not [name for name in wheel_files if PurePosixPath(name).parts[0] == "recipes"]
    assert not [name for name in wheel_files if PurePosixPath(name).name.startswith("train")]
    assert b"learn_bpe" not in wheel_files["dalle_cli/tokenizer.py"]


def test_the_wheel_holds_the_inference_code_and_the_shipped_weights(wheel_files: dict[str, bytes]) -> None:
    for name in ("dalle_cli/shapes/world.py", "dalle_cli/shapes/evaluate.py", "dalle_cli/tokenizer.py",
                 "dalle_cli/weights/registry.json", "dalle_cli/weights/shapes/dalle.json",
                 "dalle_cli/weights/shapes/decoder/diffusion_pytorch_model.safetensors"):
        assert name in wheel_files, name
    # Every module of the package, in whichever subpackage: a package missing from pyproject's list would be lost.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dalle_cli").rglob("*.py")}
    assert modules and not modules - set(wheel_files), sorted(modules - set(wheel_files))
    shipped = ROOT / "weights" / "shapes" / "decoder" / "diffusion_pytorch_model.safetensors"
    assert wheel_files["dalle_cli/weights/shapes/decoder/diffusion_pytorch_model.safetensors"] == shipped.read_bytes()
