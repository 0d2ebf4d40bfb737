"""Energy meters: RAPL against a real powercap file tree, and "unavailable, with a reason"
(never a number) where the platform exposes no counter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clip_har.export.energy import EnergyMeter, NvmlMeter, RaplMeter, energy_meter


def make_zone(
    root: Path, name: str, label: str, energy_uj: int, max_range_uj: int = 1_000_000_000
) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"{label}\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return zone


def set_energy(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages, a core subzone of package 0, a psys zone and an mmio duplicate."""
    root = tmp_path / "powercap"
    make_zone(root, "intel-rapl:0", "package-0", 5_000_000)
    make_zone(root, "intel-rapl:0:0", "core", 1_000_000)
    make_zone(root, "intel-rapl:1", "package-1", 7_000_000)
    make_zone(root, "intel-rapl:2", "psys", 9_000_000)
    make_zone(root, "intel-rapl-mmio:0", "package-0", 5_000_000)
    return root


def test_rapl_sums_packages_only(powercap: Path) -> None:
    meter = RaplMeter(powercap)
    assert meter.available and meter.reason is None and meter.source == "rapl"
    assert [zone.name for zone in meter.zones] == ["intel-rapl:0", "intel-rapl:1"]
    with meter.measure() as reading:
        set_energy(powercap / "intel-rapl:0", 5_000_000 + 2_500_000)  # +2.5 J
        set_energy(powercap / "intel-rapl:1", 7_000_000 + 1_000_000)  # +1.0 J
        set_energy(powercap / "intel-rapl:0:0", 1_000_000 + 2_000_000)  # part of package 0
        set_energy(powercap / "intel-rapl:2", 9_000_000 + 50_000_000)  # psys: not a package
        set_energy(powercap / "intel-rapl-mmio:0", 5_000_000 + 2_500_000)  # duplicate zone
    assert reading.joules == pytest.approx(3.5)
    assert reading.per_item(7) == pytest.approx(0.5)
    assert reading.seconds is not None and reading.seconds >= 0


def test_rapl_handles_counter_wrap_around(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    zone = make_zone(root, "intel-rapl:0", "package-0", 999_000_000, max_range_uj=1_000_000_000)
    meter = RaplMeter(root)
    with meter.measure() as reading:
        set_energy(zone, 500_000)  # wrapped: 1.0 J to the top, then 0.5 J
    assert reading.joules == pytest.approx(1.5)


def test_rapl_absent_is_unavailable_with_a_reason(tmp_path: Path) -> None:
    meter = RaplMeter(tmp_path / "no-powercap")
    assert not meter.available
    assert meter.reason is not None and "no RAPL powercap interface" in meter.reason
    with meter.measure() as reading:
        pass
    assert reading.joules is None
    assert reading.per_item(10) is None and reading.watts is None


def test_rapl_without_package_zones_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    make_zone(root, "intel-rapl:0:0", "core", 1)
    meter = RaplMeter(root)
    assert not meter.available
    assert meter.reason is not None and "no RAPL package zone" in meter.reason


def test_rapl_unparseable_counter_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    zone = make_zone(root, "intel-rapl:0", "package-0", 1)
    (zone / "energy_uj").write_text("not a number\n")
    meter = RaplMeter(root)
    assert not meter.available
    assert meter.reason is not None and "cannot read RAPL counter" in meter.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_rapl_root_only_counter_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    zone = make_zone(root, "intel-rapl:0", "package-0", 1)
    (zone / "energy_uj").chmod(0)
    meter = RaplMeter(root)
    assert not meter.available
    assert meter.reason is not None and "not readable by this user" in meter.reason


def test_counter_vanishing_mid_measure_gives_no_number(powercap: Path) -> None:
    meter = RaplMeter(powercap)
    with meter.measure() as reading:
        (powercap / "intel-rapl:1" / "energy_uj").unlink()
    assert reading.joules is None


@pytest.mark.skipif(
    Path("/sys/class/powercap/intel-rapl:0").exists(), reason="this machine exposes RAPL"
)
def test_cpu_meter_here_reports_unavailable_not_a_number() -> None:
    meter = energy_meter("cpu")
    assert isinstance(meter, EnergyMeter) and meter.source == "rapl"
    assert not meter.available
    assert meter.reason
    with meter.measure() as reading:
        sum(range(10_000))
    assert reading.joules is None
    assert meter.describe() == {"source": "rapl", "available": False, "reason": meter.reason}


def test_cuda_meter_without_nvml_counter_reports_why() -> None:
    meter = energy_meter("cuda:0")
    assert isinstance(meter, NvmlMeter) and meter.source == "nvml"
    if meter.available:
        pytest.skip("this machine has an NVIDIA GPU that reports its energy")
    assert meter.reason
    assert any(
        hint in meter.reason for hint in ("nvidia-ml-py", "NVIDIA driver", "does not report")
    )
    with meter.measure() as reading:
        pass
    assert reading.joules is None
