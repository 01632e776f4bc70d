"""FlashAttention-3 as a second package of flash-attn 2.8.3.post2's sdist: its names regenerated from its own
setup.py, its cells (one abi3 wheel per torch/CUDA/ABI), its variant switches, its patches on the real sdist, and
the abi3 audit on real extensions.

Real parts: the pinned sdist (cached or downloaded, sha256-checked), GNU patch, this machine's C compiler for the
extensions the abi3 audit judges, abi3audit itself. Stand-in: those extensions are tiny C modules, not FA3's CUDA
one; what the audit reads (the CPython symbols and the module's file name) is the same kind of thing.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import abi3_helpers as h
from farmtest import ROOT, flash_attn_sdist, need, torch_python
from wheelfarm import audit, build, gputest, naming, resolve, source
from wheelfarm.config import load
from wheelfarm.errors import ConfigError
from wheelfarm.matrix import Cell, expand, select

FA3 = "flash-attn-3"
PATCHES = ROOT / "patches" / FA3 / "3.0.0b1"
VARIANT = "bf16hd128"


@pytest.fixture(scope="module")
def config():
    return load(ROOT / "build_matrix.toml")


@pytest.fixture(scope="module")
def sdist_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sdist, unpacked, unpatched."""
    tmp = tmp_path_factory.mktemp("fa3-sdist")
    return source.unpack(flash_attn_sdist(tmp), tmp / "plain")


@pytest.fixture(scope="module")
def patched_tree(tmp_path_factory: pytest.TempPathFactory, sdist_tree: Path) -> Path:
    tmp = tmp_path_factory.mktemp("fa3-patched")
    root = source.unpack(flash_attn_sdist(tmp), tmp / "src")
    applied = source.apply_patches(root, PATCHES)
    assert [p.name for p in applied] == sorted(p.name for p in PATCHES.glob("*.patch"))
    return root


def _setup_py_facts(hopper: Path) -> dict[str, str]:
    """What hopper/setup.py itself says a wheel is called: PACKAGE_NAME, bdist_wheel's py_limited_api, the version."""
    tree = ast.parse((hopper / "setup.py").read_text())
    facts: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PACKAGE_NAME" for t in node.targets):
            facts["name"] = ast.literal_eval(node.value)
        if isinstance(node, ast.keyword) and node.arg == "options":
            facts["py_limited_api"] = ast.literal_eval(node.value)["bdist_wheel"]["py_limited_api"]
        if isinstance(node, ast.keyword) and node.arg == "py_limited_api":
            facts["extension_limited"] = str(ast.literal_eval(node.value))
    init = (hopper / "__init__.py").read_text()
    facts["version"] = ast.literal_eval(re.search(r"^__version__\s*=\s*(.*)$", init, re.MULTILINE)[1])
    return facts


# ------------------------------------------------------------------------------------------- naming


def test_names_are_what_hopper_setup_py_builds(config, sdist_tree: Path) -> None:
    """bdist_wheel names the wheel {PACKAGE_NAME}-{normalised version}+{FLASH_ATTN_LOCAL_VERSION}-{py_limited_api}-
    abi3-{platform}; the matrix must say the same for every FA3 cell, read from the real sdist."""
    from packaging.version import Version

    facts = _setup_py_facts(sdist_tree / "hopper")
    assert facts["extension_limited"] == "True"
    package = config.packages[FA3]
    assert str(Version(facts["version"])) in package.versions  # "3.0.0.b1" -> 3.0.0b1
    assert package.abi3 == facts["py_limited_api"] == "cp39"
    cells = [c for c in expand(config) if c.package == FA3]
    assert cells
    for cell in cells:
        want = (f"{facts['name']}-{Version(facts['version'])}+{cell.local_label}-{facts['py_limited_api']}-abi3-"
                f"{cell.platform}.whl")
        assert cell.wheel == want


def test_abi3_name_and_parse_round_trip() -> None:
    name = naming.wheel_name(FA3, "3.0.0b1", "2.11", "13.0", "3.12", True, variant=VARIANT, abi3="cp39")
    assert name == "flash_attn_3-3.0.0b1+cu13torch2.11cxx11abiTRUE.bf16hd128-cp39-abi3-linux_x86_64.whl"
    assert naming.wheel_name(FA3, "3.0.0b1", "2.11", "13.0", "3.10", True, variant=VARIANT, abi3="cp39") == name
    parsed = naming.parse_wheel_name(name)
    assert (parsed.package, parsed.version, parsed.python_tag, parsed.abi3, parsed.variant) == (
        FA3, "3.0.0b1", "cp39", True, VARIANT)
    assert naming.parse_wheel_name(name.replace("cp39-abi3", "cp312-cp312")).abi3 is False
    with pytest.raises(naming.NamingError, match="cp39-abi3"):
        naming.parse_wheel_name(name.replace("cp39-abi3", "cp39-abi4"))
    with pytest.raises(naming.NamingError, match="limited API"):
        naming.wheel_name(FA3, "3.0.0b1", "2.11", "13.0", "3.12", True, abi3="abi3")


# ------------------------------------------------------------------------------------------- matrix


def test_one_wheel_per_torch_cuda_abi_not_per_python(config) -> None:
    cells = [c for c in expand(config) if c.package == FA3]
    keys = {(c.torch, c.cuda, c.cxx11abi, c.variant, c.platform) for c in cells}
    assert len(keys) == len(cells) == len({c.wheel for c in cells})
    assert all(c.wheel.endswith(f"-cp39-abi3-{c.platform}.whl") and c.archs == ("80", "90a") for c in cells)
    assert {c.platform for c in cells} == {"linux_x86_64", "linux_aarch64"}  # x86 Hopper and Grace Hopper
    assert {c.torch for c in cells if not c.variant} >= {"2.9", "2.11", "2.14"}


def test_two_build_pythons_for_an_abi3_package_are_refused(tmp_path: Path) -> None:
    text = (ROOT / "build_matrix.toml").read_text().replace(
        'name = "gpu-fa3"\npackage = "flash-attn-3"\nversion = ["3.0.0b1"]\ntorch = ["2.11"]\ncuda = ["13.0"]\n'
        'python = ["3.12"]', 'name = "gpu-fa3"\npackage = "flash-attn-3"\nversion = ["3.0.0b1"]\ntorch = ["2.11"]\n'
        'cuda = ["13.0"]\npython = ["3.11", "3.12"]')
    assert '"3.11", "3.12"]\ncxx11abi = [true]\nvariant = "bf16hd128"' in text
    path = ROOT / f".test-fa3-{tmp_path.name}.toml"  # patches resolve against the matrix file's folder
    path.write_text(text)
    try:
        with pytest.raises(ConfigError, match="cp39-abi3, one for every Python: give the block one build Python"):
            expand(load(path))
    finally:
        path.unlink()


def test_variant_switches_reach_setup_py_and_a_feature_it_lacks_is_refused(config) -> None:
    (cell,) = select(expand(config), ["package=flash-attn-3", f"variant={VARIANT}"])
    env = build.knob_env(config, cell)
    assert env["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0a"
    assert env["FLASH_ATTENTION_FORCE_BUILD"] == "TRUE" and env["FLASH_ATTN_LOCAL_VERSION"] == cell.local_label
    assert {k for k, v in env.items() if v == "TRUE" and "DISABLE" in k} == {
        config.packages[FA3].disable_knobs[f] for f in config.variants[VARIANT].disable}
    assert "FLASH_ATTENTION_DISABLE_BACKWARD" not in env and "FLASH_ATTENTION_DISABLE_HDIM128" not in env
    assert env["FLASH_ATTENTION_DISABLE_SM80"] == "TRUE"  # hopper/setup.py's name for DISABLE_SM8x
    assert cell.cost_key.endswith(f"-{VARIANT}")  # its compile work is its own, not the full build's
    plain = dataclasses.replace(cell, variant="", disable=())
    assert not plain.cost_key.endswith(VARIANT)


def test_a_variant_disabling_an_unknown_feature_names_what_can_be(tmp_path: Path) -> None:
    text = (ROOT / "build_matrix.toml").read_text().replace('disable = ["fp16", ', 'disable = ["fp17", ')
    path = ROOT / f".test-fa3-{tmp_path.name}.toml"
    path.write_text(text)
    try:
        with pytest.raises(ConfigError, match="disables fp17, which flash-attn-3 has no disable-knobs for") as err:
            expand(load(path))
        assert "fp16" in (err.value.hint or "")
    finally:
        path.unlink()


def test_build_root_is_the_sdists_hopper_folder(config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cell,) = select(expand(config), ["package=flash-attn-3", f"variant={VARIANT}"])
    calls = []

    def fake_prepare(project, version, sha, src, dirs, cache, work, pin=None):  # the real one is tested below
        calls.append((project, version, sha, [d.relative_to(ROOT).as_posix() for d in dirs], pin))
        (work / "source" / "flash_attn-2.8.3.post2" / "hopper").mkdir(parents=True)
        (work / "source" / "flash_attn-2.8.3.post2" / "hopper" / "setup.py").write_text("")
        return work / "source" / "flash_attn-2.8.3.post2"

    monkeypatch.setattr(source, "prepare_source", fake_prepare)
    paths = build.BuildPaths(tmp_path / "work", tmp_path / "wh")
    root = build.prepare_tree(config, cell, paths)
    assert root.name == "hopper" and root.parent.name == "flash_attn-2.8.3.post2"
    assert calls == [("flash-attn", "2.8.3.post2", config.packages["flash-attn"].versions["2.8.3.post2"].sha256,
                      ["patches/flash-attn-3/3.0.0b1"], 'packages.flash-attn-3.versions."3.0.0b1".sha256')]


# ------------------------------------------------------------------------------------------- patches


_TOOLKIT = re.compile(r"(cuda(?!_check)|cub/|thrust/|nv|vector_types|device_|math_constants)")  # CUDA's headers


def _includes(path: Path) -> list[tuple[str, bool]]:
    return [(m[2], m[1] == '"') for m in re.finditer(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', path.read_text(),
                                                     re.MULTILINE)]


def unresolved_includes(root: Path, entry: Path) -> set[str]:
    """CUTLASS/CuTe and local headers that ``entry`` needs, transitively, but the tree lacks (system, CUDA and
    torch headers come from the toolkit and torch: not judged)."""
    dirs = [root / "hopper", root / "csrc" / "cutlass" / "include"]
    seen: set[Path] = set()
    missing: set[str] = set()
    todo = [entry]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name, quoted in _includes(current):
            found = next((d / name for d in [current.parent, *dirs] if (d / name).is_file()), None)
            if found is not None:
                todo.append(found.resolve())
            elif name.startswith(("cute/", "cutlass/")) or (quoted and not _TOOLKIT.match(name)):
                missing.add(name)
    return missing


def test_sdist_lacks_hopper_sources_and_patch_0001_adds_them(sdist_tree: Path, patched_tree: Path) -> None:
    """The sdist's hopper/ has setup.py but nothing it compiles; after the patches every source setup.py can list
    (the sdist's own generate_kernels.py says which) is there byte for byte, and every header they include too."""
    assert (sdist_tree / "hopper" / "setup.py").is_file() and not (sdist_tree / "hopper" / "flash_api.cpp").exists()
    generated = patched_tree.parent / "generated"
    subprocess.run([sys.executable, "generate_kernels.py", "-o", str(generated)], cwd=sdist_tree / "hopper",
                   check=True, capture_output=True)
    kernels = sorted(generated.glob("*.cu"))
    assert len(kernels) > 400
    for kernel in kernels:
        assert (patched_tree / "hopper" / "instantiations" / kernel.name).read_bytes() == kernel.read_bytes()
    for name in ("flash_api.cpp", "flash_fwd_combine.cu", "flash_prepare_scheduler.cu"):
        assert (patched_tree / "hopper" / name).is_file()
    fwd = Path("hopper/instantiations/flash_fwd_hdim128_bf16_sm90.cu")
    assert unresolved_includes(sdist_tree, patched_tree / fwd) == {"flash_fwd_launch_template.h"}  # no hopper/ sources
    no_inl = patched_tree.parent / "no-inl"  # hopper/'s sources, but CUTLASS as the sdist has it (no *.inl)
    shutil.copytree(patched_tree / "hopper", no_inl / "hopper")
    shutil.copytree(sdist_tree / "csrc" / "cutlass" / "include", no_inl / "csrc" / "cutlass" / "include")
    assert unresolved_includes(no_inl, no_inl / fwd) == {"cutlass/gemm/collective/builders/sm90_common.inl",
                                                         "cutlass/epilogue/collective/builders/sm90_common.inl"}
    for entry in (fwd, Path("hopper/instantiations/flash_bwd_hdim128_bf16_sm90.cu"), Path("hopper/flash_api.cpp"),
                  Path("hopper/flash_fwd_combine.cu"), Path("hopper/flash_prepare_scheduler.cu")):
        assert unresolved_includes(patched_tree, patched_tree / entry) == set(), entry


def test_patch_0001_blobs_are_the_files_it_adds(patched_tree: Path) -> None:
    """Each "index 0000000..<blob>" line is the git blob id of the file added (so it can be compared with
    upstream's `git rev-parse v2.8.3:<path>`): the patch carries those files unchanged."""
    import hashlib

    text = (PATCHES / "0001-add-hopper-sources-missing-from-the-sdist.patch").read_text()
    pairs = re.findall(r"^diff --git a/(\S+) b/\S+\nnew file mode \d+\nindex 0{7,}\.\.([0-9a-f]{40})$", text,
                       re.MULTILINE)
    assert len(pairs) == 489
    for path, blob in pairs:
        data = (patched_tree / path).read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, path


def test_patched_setup_py_never_downloads_or_calls_git(sdist_tree: Path, patched_tree: Path) -> None:
    before = (sdist_tree / "hopper" / "setup.py").read_text()
    after = (patched_tree / "hopper" / "setup.py").read_text()
    assert "download_and_copy(\n" in before.split("def download_and_copy")[1]  # upstream calls it
    assert 'PYTORCH_NVCC"] = nvcc_path_new' in before and '"git", "submodule"' in before
    after_helpers = after.split("def nvcc_threads_args")[1]  # the module's own code, not its helper functions
    body = "\n".join(line for line in after_helpers.splitlines() if not line.lstrip().startswith("#"))
    assert "download_and_copy(" not in body and "PYTORCH_NVCC" not in body and '"git"' not in body
    assert '"-std=c++17"' not in body and "cxx_std_for_torch()" in body
    assert '"-DPy_LIMITED_API=0x03090000"' in after and "py_limited_api=True" in after
    compile(after, "setup.py", "exec")


# ------------------------------------------------------------------------------------------- abi3 audit


@pytest.fixture(scope="module")
def cc() -> str:
    need(h.compiler() and (h.python_include() / "Python.h").is_file(), "a C compiler and Python.h")
    return str(h.compiler())


def _abi3_check(wheel: Path) -> audit.Check:
    declared = audit.resolve_declared(wheel.name, None)
    with zipfile.ZipFile(wheel) as zf:
        return audit.check_abi3(declared, wheel, zf.namelist())


def test_abi3_audit_accepts_a_real_limited_api_extension(cc: str, tmp_path: Path) -> None:
    check = _abi3_check(h.make_extension_wheel(tmp_path, h.LIMITED))
    assert check.passed and not check.skipped
    assert "_C.abi3.so within the stable ABI of Python 3.9" in check.detail and "abi3audit 0.0.26" in check.detail


@pytest.mark.parametrize(("code", "module", "says"), [
    (h.PRIVATE, "_C.abi3.so", "_C.abi3.so uses _PyBytes_Resize, not in the stable ABI"),
    (h.TOO_NEW, "_C.abi3.so", "uses PyObject_Vectorcall (abi3 from 3.12), newer than the tag's Python 3.9"),
    (h.LIMITED, "_C.cpython-312-x86_64-linux-gnu.so", "_C.cpython-312-x86_64-linux-gnu.so is named for one Python"),
])
def test_abi3_audit_refuses_what_another_python_cannot_import(cc: str, tmp_path: Path, code: str, module: str,
                                                               says: str) -> None:
    check = _abi3_check(h.make_extension_wheel(tmp_path, code, module_name=module))
    assert not check.passed and says in check.detail
    assert "every CPython >= 3.9" in check.impact


def test_abi3_check_runs_in_the_audit_of_abi3_wheels_only(cc: str, tmp_path: Path) -> None:
    plain = h.make_extension_wheel(tmp_path, h.PRIVATE, module_name="_C.cpython-311-x86_64-linux-gnu.so",
                                   tag="cp311-cp311-linux_x86_64")
    assert _abi3_check(plain).skipped
    assert "abi3" not in {c.name for c in audit.audit_wheel(plain, write_json=False).checks}
    bad = h.make_extension_wheel(tmp_path / "bad", h.PRIVATE)
    report = audit.audit_wheel(bad, write_json=False)
    (check,) = [c for c in report.checks if c.name == "abi3"]
    assert not check.passed and not report.passed and report.declared.abi3 is True


def test_cells_are_plain_data_for_abi3() -> None:
    cell = Cell(FA3, "3.0.0b1", "2.11", "13.0", "3.12", True, ("80", "90a"), abi3="cp39")
    data = cell.to_json()
    assert data["abi3"] == "cp39" and data["wheel"].endswith("-cp39-abi3-linux_x86_64.whl")


# ------------------------------------------------------------------------------------------- GPU test wiring


def test_gpu_test_rules_follow_the_wheels_variant(config) -> None:
    """gpu-test reads the variant from the wheel's local label and sets its DISABLE switches for the checks and for
    upstream's test file, which parametrises by them; the test file's imports come along."""
    (cell,) = select(expand(config), ["package=flash-attn-3", f"variant={VARIANT}"])
    wheel = gputest.describe_wheel(Path(cell.wheel))
    assert (wheel.project, wheel.torch, wheel.cuda_major, wheel.variant) == (FA3, "2.11", "13", VARIANT)
    rules = gputest.rules_for(wheel.project, ROOT / "build_matrix.toml", wheel.variant)
    assert rules.checks == "flash_attn_3" and rules.upstream_file == "hopper/test_flash_attn.py"
    assert rules.upstream_support == ("hopper/test_util.py", "hopper/padding.py")
    assert rules.env == {config.packages[FA3].disable_knobs[f]: "TRUE" for f in config.variants[VARIANT].disable}
    plain = gputest.rules_for(wheel.project, ROOT / "build_matrix.toml", "")
    assert plain.env == {}
    assert gputest.describe_wheel(Path(cell.wheel.replace(f".{VARIANT}", ""))).variant == ""


def test_upstream_test_file_and_its_imports_come_out_of_the_real_sdist(config, tmp_path: Path) -> None:
    sdist = flash_attn_sdist(tmp_path)
    rules = gputest.rules_for(FA3, ROOT / "build_matrix.toml")
    dest = tmp_path / "upstream"
    test_file = gputest.extract_upstream(sdist, str(rules.upstream_file), dest)
    for support in rules.upstream_support:
        gputest.extract_upstream(sdist, support, dest)
    imported = {m[1] for m in re.finditer(r"^from (\w+) import", test_file.read_text(), re.MULTILINE)}
    assert {"padding", "test_util"} <= imported
    assert all((dest / f"{name}.py").is_file() for name in ("padding", "test_util"))
    assert "flash_attn_interface" in imported and not (dest / "flash_attn_interface.py").exists()  # the wheel's


def test_fa3_checks_follow_the_disable_switches(tmp_path: Path) -> None:
    """The check list (``--list``: no GPU, no FA3 needed) drops what the variant compiled out; run by a torch
    interpreter as gpu-test runs it."""
    import os

    python = str(torch_python())
    script = str(gputest.gpu_checks.script("flash_attn_3"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_ATTENTION_DISABLE_")}

    def listed(env: dict[str, str]) -> list[str]:
        done = subprocess.run([python, script, "--list"], capture_output=True, text=True, env={**clean, **env},
                              cwd=tmp_path, check=True)
        return done.stdout.split()

    full = listed({})
    config = load(ROOT / "build_matrix.toml")
    lite = listed({config.packages[FA3].disable_knobs[f]: "TRUE" for f in config.variants[VARIANT].disable})
    assert any("-fp16-" in n for n in full) and any("-d64-" in n for n in full)
    assert any(n.endswith("-new") for n in full)
    assert lite and len(lite) < len(full) and all("-bf16-d128-" in n for n in lite)
    assert not any(n.endswith("-new") for n in lite) and any(n.startswith("varlen-") for n in lite)


def test_resolve_takes_an_abi3_wheel_for_every_python_from_its_tag() -> None:
    name = naming.wheel_name(FA3, "3.0.0b1", "2.11", "13.0", "3.12", True, abi3="cp39")
    wheel = naming.parse_wheel_name(name)
    for python, fits in (("3.10", True), ("3.14", True), ("3.8", False)):
        env = resolve.Env(python, "2.11.0", "13.0", True)
        assert bool(resolve._mismatches(env, wheel, {})) is not fits, python
    assert resolve._mismatches(resolve.Env("3.8", "2.11.0", "13.0", True), wheel, {}) == ["python cp38 < cp39 (abi3)"]
    per_python = naming.parse_wheel_name(name.replace("cp39-abi3", "cp312-cp312"))
    assert resolve._mismatches(resolve.Env("3.13", "2.11.0", "13.0", True), per_python, {}) == ["python cp312 ≠ cp313"]
