"""Device and dtype choice: fp32 on the CPU, fp16 on accelerators, and clear errors for what is not there."""

import pytest
import torch

from dalle_cli.devices import resolve_device, resolve_dtype
from dalle_cli.errors import UsageError


def test_auto_dtype_follows_the_device() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("auto", torch.device("mps")) is torch.float16
    assert resolve_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(UsageError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_auto_device_is_what_this_machine_has() -> None:
    from dalle_cli.devices import mps_available

    expected = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_missing_cuda_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device("cuda")
