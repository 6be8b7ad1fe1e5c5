"""The hardware-spec database: every file loads, figures are right, lookup is forgiving,
malformed files give errors naming file and field, and user files override built-ins."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from rooflight.errors import SpecError, UnknownHardwareError
from rooflight.hardware import builtin_spec_dir, load_database, load_spec_file
from rooflight.roofline import compute_floor_s, memory_floor_s, peak_flops_per_s, resolve_class, ridge_point
from rooflight.math_class import MathClass

SPEC_DIR = builtin_spec_dir()
H100 = SPEC_DIR / "h100_sxm.toml"

EXPECTED_GPUS = ["a10", "a100_40gb_pcie", "a100_80gb_pcie", "a100_80gb_sxm", "h100_pcie", "h100_sxm",
                 "h200_sxm", "rtx_4090", "rx_7900_xtx"]


def test_every_required_gpu_has_a_file():
    keys = {p.stem for p in SPEC_DIR.glob("*.toml")}
    missing = [k for k in EXPECTED_GPUS if k not in keys]
    assert not missing, f"no spec file for {missing}"


@pytest.mark.parametrize("path", sorted(SPEC_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_spec_file_loads_and_cites_sources(path):
    spec = load_spec_file(path)
    assert spec.key == path.stem
    assert spec.memory_bytes_per_s > 0 and spec.memory_bytes > 0
    for dotted, fig in spec.figures.items():
        assert fig.source.strip(), f"{path.name}: {dotted} names no source"
    # a sparse figure sits beside its dense one and is never smaller
    for cls, sparse in spec.sparse_flops_per_s.items():
        assert sparse >= spec.peak_flops_per_s[cls]


def test_aliases_and_names_are_unique_across_files():
    from rooflight.hardware import _norm

    seen: dict[str, str] = {}
    for spec in load_database():
        for ident in {_norm(i) for i in (spec.key, spec.name, *spec.aliases, *spec.nvml_names)}:
            assert ident not in seen or seen[ident] == spec.key, f"{ident!r} is used by {seen[ident]} and {spec.key}"
            seen[ident] = spec.key


@pytest.mark.parametrize("key,expected", [
    ("a10", 208.3),       # 125 TFLOPS / 600 GB/s = 208.3 FLOP/B
    ("h100_sxm", 295.3),  # 989.4 TFLOPS / 3.35 TB/s = 295.3
    ("h200_sxm", 206.1),  # 989.4 TFLOPS / 4.8 TB/s = 206.1
])
def test_ridge_points_come_out_of_the_database(key, expected):
    spec = load_database().get(key)
    assert ridge_point(spec, MathClass.BF16_TENSOR) == pytest.approx(expected, abs=0.2)


def test_floors_are_work_over_peak():
    spec = load_spec_file(H100)
    # 989.4e12 FLOP of bf16 tensor math at 989.4 TFLOP/s takes exactly 1 s
    assert compute_floor_s(989.4e12, spec, "bf16_tensor") == pytest.approx(1.0)
    # 3.35e12 bytes at 3.35 TB/s: 1 s
    assert memory_floor_s(3.35e12, spec) == pytest.approx(1.0)


def test_dense_not_sparse_figures_on_hopper():
    spec = load_spec_file(H100)
    assert spec.peak_flops_per_s[MathClass.BF16_TENSOR] == pytest.approx(989.4e12)
    assert spec.sparse_flops_per_s[MathClass.BF16_TENSOR] == pytest.approx(1979e12)


def test_missing_classes_fall_back_as_the_chip_would():
    db = load_database()
    xtx = db.get("7900xtx")
    assert MathClass.FP8_TENSOR not in xtx.peak_flops_per_s  # RDNA3 has no fp8
    assert resolve_class(xtx, MathClass.FP8_TENSOR) is MathClass.FP16_TENSOR
    a100 = db.get("a100_80gb_sxm")
    assert not a100.has(MathClass.FP8_TENSOR)
    assert peak_flops_per_s(a100, MathClass.FP8_TENSOR) == peak_flops_per_s(a100, MathClass.FP16_TENSOR)


def test_geforce_records_both_accumulate_rates():
    spec = load_database().get("4090")
    fp32_acc = spec.peak_flops_per_s[MathClass.FP16_TENSOR]
    fp16_acc = spec.peak_flops_per_s[MathClass.FP16_TENSOR_FP16_ACC]
    assert fp16_acc == pytest.approx(2 * fp32_acc)


def test_rx7900xtx_fp32_records_dual_issue():
    spec = load_database().get("rx 7900 xtx")
    fig = spec.figures["peak_dense.fp32"]
    assert "dual" in fig.note.lower()


@pytest.mark.parametrize("name", ["h100", "H100-SXM", "h100_sxm", "NVIDIA H100 80GB HBM3", "h100 sxm5"])
def test_forgiving_lookup(name):
    assert load_database().get(name).key == "h100_sxm"


@pytest.mark.parametrize("name,key", [("NVIDIA H200", "h200_sxm"), ("NVIDIA H100 PCIe", "h100_pcie"),
                                      ("NVIDIA GeForce RTX 4090", "rtx_4090"), ("NVIDIA A10", "a10"),
                                      ("4090", "rtx_4090"), ("h200", "h200_sxm")])
def test_nvml_names_and_short_names_resolve(name, key):
    assert load_database().get(name).key == key


def test_ambiguous_name_lists_the_candidates():
    with pytest.raises(UnknownHardwareError, match="ambiguous") as err:
        load_database().get("a100")
    msg = str(err.value)
    assert "A100" in msg and msg.count("A100") >= 3
    assert "\n" not in msg


def test_unknown_name_lists_near_matches():
    with pytest.raises(UnknownHardwareError, match=r"unknown GPU 'h1OO'.*near matches") as err:
        load_database().get("h1OO")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ malformed files


def _write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _h100_text() -> str:
    return H100.read_text()


@pytest.mark.parametrize("edit,message", [
    # a typo in a field name names the field and suggests the right one
    (lambda t: t.replace("bandwidth = {", "bandwith = {", 1), r"bad\.toml: unknown field 'memory\.bandwith' \(did you mean 'memory\.bandwidth'\?\)"),
    # a missing required figure
    (lambda t: re.sub(r"^bandwidth = .*$", "", t, count=1, flags=re.M), r"bad\.toml: missing required field 'memory\.bandwidth'"),
    # a bandwidth written in a compute unit
    (lambda t: t.replace('"3.35 TB/s"', '"3.35 TFLOPS"'), r"bad\.toml: field 'memory\.bandwidth': '3\.35 TFLOPS' has a unit of flops per s"),
    # a unit nobody knows
    (lambda t: t.replace('"3.35 TB/s"', '"3.35 furlongs"'), r"field 'memory\.bandwidth': '3\.35 furlongs'"),
    # zero and negative numbers
    (lambda t: t.replace('"3.35 TB/s"', '"0 TB/s"'), r"field 'memory\.bandwidth' must be positive"),
    (lambda t: t.replace('"67 TFLOPS", source = "datasheet" }\nfp16', '"-67 TFLOPS", source = "datasheet" }\nfp16'), r"field 'peak_dense\.fp32' must be positive"),
    # integer fields reject units
    (lambda t: t.replace("value = 132,", 'value = "132 SMs",'), r"field 'chip\.multiprocessors' must be a whole number"),
    # a figure citing a source that is not in [sources]
    (lambda t: t.replace('bandwidth = { value = "3.35 TB/s", source = "datasheet" }', 'bandwidth = { value = "3.35 TB/s", source = "datashet" }'), r"cites source 'datashet', which is not in \[sources\] \(did you mean 'datasheet'\?\)"),
    # a bare number where a cited figure belongs
    (lambda t: t.replace('bandwidth = { value = "3.35 TB/s", source = "datasheet" }', 'bandwidth = "3.35 TB/s"'), r"field 'memory\.bandwidth' must be a table"),
    # sparse figure without its dense one
    (lambda t: t.replace('int8_tensor = { value = "1979 TOPS"', 'int4_tensor = { value = "1979 TOPS"').replace('[peak_sparse]\n', '[peak_sparse]\nfp64 = { value = "99 TFLOPS", source = "datasheet" }\n'), r"'peak_sparse\.int8_tensor' given without its dense figure"),
    # not TOML at all
    (lambda t: t + "\n[[[", r"bad\.toml: not valid TOML"),
])
def test_malformed_spec_gives_the_intended_error(tmp_path, edit, message):
    path = _write(tmp_path, edit(_h100_text()))
    with pytest.raises(SpecError, match=message) as err:
        load_spec_file(path)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ user directories


def test_user_directory_adds_and_overrides(tmp_path, monkeypatch):
    # a user file with the built-in's name replaces it; hw show can say which file it came from
    text = _h100_text().replace('"3.35 TB/s"', '"3.0 TB/s"')
    _write(tmp_path, text, "my_h100.toml")
    # and a new GPU of the user's own
    new = _h100_text().replace('name = "H100 SXM"', 'name = "Lab GPU X1"').replace(
        'aliases = ["h100", "h100-sxm5", "h100-80gb-hbm3", "h100-sxm5-80gb"]', 'aliases = ["x1"]')
    new = re.sub(r"^aliases = .*$", 'aliases = ["x1"]', new, flags=re.M)
    new = re.sub(r"^nvml_names = .*$", 'nvml_names = ["Lab X1"]', new, flags=re.M)
    _write(tmp_path, new, "lab_x1.toml")
    monkeypatch.setenv("ROOFLIGHT_HW_DIR", str(tmp_path))
    db = load_database()
    spec = db.get("h100")
    assert spec.memory_bytes_per_s == pytest.approx(3.0e12)
    assert spec.origin == "user" and spec.path.endswith("my_h100.toml")
    assert spec.overrides.endswith("h100_sxm.toml")
    assert db.get("x1").name == "Lab GPU X1"
    assert len(db) == len(load_database(include_env=False)) + 1


def test_user_directory_validates_like_builtins(tmp_path, monkeypatch):
    _write(tmp_path, _h100_text().replace('"3.35 TB/s"', '"3.35 GFLOPS"'), "broken.toml")
    monkeypatch.setenv("ROOFLIGHT_HW_DIR", str(tmp_path))
    with pytest.raises(SpecError, match=r"broken\.toml: field 'memory\.bandwidth'"):
        load_database()


def test_missing_user_directory_is_an_error(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_database([tmp_path / "nope"])


def test_builtin_dir_is_the_repositorys_hw_specs():
    assert (SPEC_DIR / "h100_sxm.toml").is_file()
    assert math.isfinite(load_spec_file(H100).memory_bytes)
