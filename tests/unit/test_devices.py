"""One device parser: ``cpu``, ``cuda`` and ``cuda:N``, and nothing else."""

from __future__ import annotations

import pytest

from clip_har.devices import Device, parse_device
from clip_har.errors import UsageError
from clip_har.inference.engines import EngineOptions


@pytest.mark.parametrize(
    ("name", "device", "canonical"),
    [
        ("cpu", Device("cpu"), "cpu"),
        ("cuda", Device("cuda"), "cuda"),
        ("cuda:1", Device("cuda", 1), "cuda:1"),
        (" cuda:12 ", Device("cuda", 12), "cuda:12"),
    ],
)
def test_valid_devices_parse_to_their_canonical_name(
    name: str, device: Device, canonical: str
) -> None:
    parsed = parse_device(name)
    assert parsed == device and str(parsed) == canonical
    assert parsed.is_cuda == (device.type == "cuda")
    assert parsed.cuda_index == (device.index or 0)


@pytest.mark.parametrize("name", ["", "gpu", "cpu:0", "cuda:", "cuda:x", "cudax", "CUDA", "mps"])
def test_anything_else_is_a_usage_error_naming_the_accepted_devices(name: str) -> None:
    with pytest.raises(UsageError, match=r"device must be cpu, cuda or cuda:N"):
        parse_device(name)


def test_engine_options_use_the_same_parser() -> None:
    assert EngineOptions(device="cuda:0").device == "cuda:0"
    with pytest.raises(UsageError, match="got 'cudax'"):
        EngineOptions(device="cudax")
