"""Shared fixtures: one tiny Karlo checkpoint per test session, built with the reference libraries."""

from pathlib import Path

import pytest
import torch

from tiny_karlo import build_reference, make_tiny_karlo


@pytest.fixture(autouse=True)
def _same_threads():  # noqa: ANN202
    """Every test starts with the session's torch thread count: a CLI run in process sets its own."""
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


@pytest.fixture(scope="session")
def tiny_reference():
    """(UnCLIPPipeline, CLIPVisionModelWithProjection, CLIPImageProcessor): the reference objects, seeded."""
    return build_reference(seed=0)


@pytest.fixture(scope="session")
def tiny_karlo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Karlo-layout model folder (plus image_encoder/ and feature_extractor/), same weights as
    `tiny_reference`."""
    return make_tiny_karlo(tmp_path_factory.mktemp("models") / "tiny-karlo", seed=0)



@pytest.fixture(scope="session")
def tiny_kandinsky_reference():
    """The tiny Kandinsky 2.2's reference pipelines (prior, decoder), seeded as `tiny_kandinsky`."""
    from tiny_kandinsky import build_reference

    return build_reference(seed=0)


@pytest.fixture(scope="session")
def tiny_kandinsky(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny Kandinsky 2.2 saved as its two hub folders: (prior, decoder)."""
    from tiny_kandinsky import make_tiny_kandinsky

    return make_tiny_kandinsky(tmp_path_factory.mktemp("models") / "tiny-kandinsky", seed=0)


@pytest.fixture(scope="session")
def tiny_kandinsky_inpaint_reference():
    """The tiny Kandinsky 2.2 inpainting decoder's reference pipeline (`KandinskyV22InpaintPipeline`), seeded as
    `tiny_kandinsky_inpaint`; it pairs with the prior of `tiny_kandinsky_reference`."""
    from tiny_kandinsky import build_inpaint_decoder

    return build_inpaint_decoder(seed=1)


@pytest.fixture(scope="session")
def tiny_kandinsky_inpaint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny inpainting decoder saved in the hub layout of kandinsky-community/kandinsky-2-2-decoder-inpaint."""
    from tiny_kandinsky import make_tiny_inpaint_decoder

    return make_tiny_inpaint_decoder(tmp_path_factory.mktemp("models") / "tiny-kandinsky-inpaint", seed=1)
