"""`diffusion.slerp`: the true spherical interpolation the manipulations use, with the length moved linearly."""

import math

import pytest
import torch

from dalle_cli.diffusion.slerp import angle, slerp, slerp_rows
from dalle_cli.errors import SchedulerError


def _pair(seed: int, shape: tuple[int, ...] = (3, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def test_unit_vectors_stay_unit_and_the_ends_are_exact() -> None:
    a, b = (torch.nn.functional.normalize(x, dim=-1) for x in _pair(0))
    assert torch.equal(slerp(a, b, 0), a) and torch.equal(slerp(a, b, 1.0), b)
    for theta in (0.1, 0.25, 0.5, 0.9):
        assert torch.allclose(slerp(a, b, theta).norm(dim=-1), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_the_angle_grows_linearly_with_theta_along_the_great_circle() -> None:
    a, b = _pair(1)
    total = angle(a, b).double()
    for theta in (0.2, 0.5, 0.7):
        c = slerp(a, b, theta)
        assert torch.allclose(angle(a, c).double(), theta * total, atol=2e-6)
        assert torch.allclose(angle(c, b).double(), (1 - theta) * total, atol=2e-6)
        # On the plane of a and b: c is a combination of the two, so nothing is added out of that plane.
        basis = torch.stack([a, b], dim=-1)  # [3, D, 2]
        coefficients = torch.linalg.lstsq(basis, c[..., None]).solution
        assert torch.allclose((basis @ coefficients)[..., 0], c, atol=1e-9)


def test_lengths_are_interpolated_linearly_and_it_is_not_elementwise() -> None:
    a, b = _pair(2)
    b = 3 * b
    c = slerp(a, b, 0.25)
    assert torch.allclose(c.norm(dim=-1), 0.75 * a.norm(dim=-1) + 0.25 * b.norm(dim=-1), atol=1e-12)
    # The diffusers community pipelines' "slerp" takes acos of elementwise products; this one is a rotation.
    assert not torch.allclose(c, 0.75 * a + 0.25 * b)


def test_float32_in_float32_out_and_rows_of_samples() -> None:
    a, b = (x.float() for x in _pair(3, (2, 3, 4, 4)))
    c = slerp_rows(a, b, 0.5)
    assert c.dtype == torch.float32 and c.shape == a.shape
    flat = slerp(a.flatten(1), b.flatten(1), 0.5)
    assert torch.equal(c.flatten(1), flat)
    assert math.isclose(float(angle(a.flatten(1), c.flatten(1))[0]), float(angle(a.flatten(1), b.flatten(1))[0]) / 2,
                        abs_tol=1e-5)


def test_parallel_vectors_interpolate_and_bad_input_is_refused() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)
    with pytest.raises(SchedulerError, match="opposite"):
        slerp(a, -a, 0.5)
    with pytest.raises(SchedulerError, match="zero vector"):
        slerp(a, torch.zeros_like(a), 0.5)
    with pytest.raises(SchedulerError, match="between 0 and 1"):
        slerp(a, a, 1.5)
    with pytest.raises(SchedulerError, match="one shape"):
        slerp(a, torch.ones(2, 3), 0.5)
