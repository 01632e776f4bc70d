"""build_matrix.toml: the shipped matrix expands as documented, and each kind of broken file exits 2 with
``build_matrix.toml:LINE: …`` naming the key and value."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from wheelfarm import build
from wheelfarm.cli import main
from wheelfarm.config import load
from wheelfarm.errors import BadInput
from wheelfarm.matrix import expand, select, with_variant

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """\
[packages.flash-attn]
min-arch = 80
knobs = { archs = "FLASH_ATTN_CUDA_ARCHS", local-version = "FLASH_ATTN_LOCAL_VERSION" }

[packages.flash-attn.versions."2.8.3.post2"]
sha256 = "d0f9f0b08a986cdeadbffcf5ec8b3a8f514366c68ad1853d3ab061bc83cc340b"
archs = ["80", "90"]

[torch."2.4"]
cuda = ["11.8", "12.4"]
python = ">=3.8,<3.13"
cxx11abi = [true, false]

[torch."2.8"]
cuda = ["12.8", "12.9"]
python = ">=3.9,<3.14"
cxx11abi = [true]

[cuda."12.9"]
index-url = "https://download.pytorch.org/whl/cu129"
toolkit = ["nvidia-cuda-nvcc-cu12==12.9.*"]

[cuda."13.0"]
index-url = "https://download.pytorch.org/whl/cu130"
toolkit = ["nvidia-cuda-nvcc==13.0.*"]

[variants.sm90]
archs = ["90"]

[[matrix]]
name = "main"
package = "flash-attn"
version = ["2.8.3.post2"]
torch = ["2.4", "2.8"]
cuda = ["12.9"]
python = ["3.11", "3.12"]
cxx11abi = [true]
"""


def in_block(old: str, new: str):
    """An edit of the [[matrix]] block only (the same text appears in the [torch] tables)."""

    def edit(text: str) -> str:
        head, block = text.split("[[matrix]]", 1)
        return head + "[[matrix]]" + block.replace(old, new, 1)

    return edit


def run_cli(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "build_matrix.toml"
    path.write_text(text)
    code = main(["matrix", "--json", "--matrix", str(path)])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_minimal_matrix_expands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(tmp_path, MINIMAL, capsys)
    assert code == 0
    cells = json.loads(out)
    assert [c["wheel"] for c in cells] == [
        "flash_attn-2.8.3.post2+cu12torch2.4cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
        "flash_attn-2.8.3.post2+cu12torch2.4cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
        "flash_attn-2.8.3.post2+cu12torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
        "flash_attn-2.8.3.post2+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
    ]
    assert cells[0]["torch_cuda"] == "12.4"  # highest torch 2.4 CUDA 12 build not newer than the 12.9 toolkit
    assert cells[0]["index"] == "cu12torch2.4cxx11abiTRUE"
    assert set(cells[0]) >= {"package", "version", "torch", "cuda", "python", "cxx11abi", "archs", "variant",
                             "platform", "wheel", "index"}


# (what is broken, edit of MINIMAL, the line's needle in the broken text, words the message must contain)
BROKEN = [
    ("invalid TOML", in_block('name = "main"', 'name = "main'), 'name = "main',
     ["not valid TOML"]),
    ("unknown key with suggestion", lambda t: t.replace('python = ["3.11"', 'pyhton = ["3.11"'), "pyhton",
     ["unknown key", "pyhton", "did you mean 'python'"]),
    ("wrong type", lambda t: t.replace('torch = ["2.4", "2.8"]', 'torch = "2.8"'), 'torch = "2.8"',
     ["matrix[0].torch", "must be a list", "'2.8'"]),
    ("missing sha256", lambda t: re.sub(r'sha256 = "[0-9a-f]{64}"\n', "", t),
     '[packages.flash-attn.versions."2.8.3.post2"]', ["missing required key", "sha256"]),
    ("malformed sha256", lambda t: t.replace('"d0f9f0b08a986', '"XYZ'), 'sha256 = "XYZ',
     ["sha256", "64 lowercase hex", "XYZ"]),
    ("number where a string belongs", lambda t: t.replace('archs = ["90"]', "archs = [90]"), "archs = [90]",
     ["variants.sm90.archs", "number 90", '"90"']),
    ("impossible python", lambda t: t.replace('python = ["3.11", "3.12"]', 'python = ["3.12", "3.13"]'),
     '[[matrix]]', ["impossible cell", "torch 2.4 has no wheels for Python 3.13"]),
    ("impossible ABI", in_block("cxx11abi = [true]\n", "cxx11abi = [false]\n"), "[[matrix]]",
     ["impossible cell", "torch 2.8 is not built with cxx11abi=FALSE"]),
    ("unknown torch", lambda t: t.replace('torch = ["2.4", "2.8"]', 'torch = ["2.4", "2.99"]'), "[[matrix]]",
     ["torch 2.99 is not in the [torch] table"]),
    ("no CUDA build of that major", lambda t: t.replace('cuda = ["12.9"]', 'cuda = ["13.0"]'), "[[matrix]]",
     ["torch 2.4 has no CUDA 13.x build"]),
    ("unsupported arch", in_block("cxx11abi = [true]\n", 'cxx11abi = [true]\narchs = ["75"]\n'),
     "[[matrix]]", ["does not support sm75", "sm80"]),
    ("unknown variant", lambda t: t + 'variant = "sm9O"\n', 'variant = "sm9O"', ["unknown variant 'sm9O'",
                                                                                 "did you mean 'sm90'"]),
    ("duplicate cell", lambda t: t + t[t.index("[[matrix]]"):].replace('name = "main"', 'name = "again"'),
     'name = "again"', ["duplicate cell", "flash_attn-2.8.3.post2+cu12torch2.4cxx11abiTRUE-cp311"]),
    ("unknown top-level table", lambda t: t.replace("[variants.sm90]", "[variant.sm90]"), "[variant.sm90]",
     ["unknown key 'variant'", "did you mean 'variants'"]),
    ("variant patch folder outside the repo",
     lambda t: t.replace('archs = ["90"]', 'archs = ["90"]\npatches = "../p"', 1), 'patches = "../p"',
     ["variants.sm90.patches", "inside the repository"]),
]


@pytest.mark.parametrize(("what", "edit", "needle", "words"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_matrix_exits_2_with_location(tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str,
                                             edit, needle: str, words: list[str]) -> None:
    text = edit(MINIMAL)
    assert text != MINIMAL, what
    code, out = run_cli(tmp_path, text, capsys)
    assert code == 2, out
    flat = " ".join(out.split())
    match = re.search(r"build_matrix\.toml:(\d+): ", flat)
    assert match, flat
    expected = line_of(text, needle) if needle != "[[matrix]]" else line_of(text, "[[matrix]]")
    assert int(match.group(1)) == expected, flat
    for word in words:
        assert word in flat, (word, flat)


def test_exclude_removes_cells(tmp_path: Path) -> None:
    path = tmp_path / "build_matrix.toml"
    path.write_text(in_block("cxx11abi = [true]\n", 'cxx11abi = [true]\nexclude = [{ torch = "2.4.1", '
                                                   'python = "3.12" }]\n')(MINIMAL))
    wheels = [c.wheel for c in expand(load(path))]
    assert len(wheels) == 3
    assert not any("torch2.4" in w and "cp312" in w for w in wheels)


def test_shipped_matrix_has_upstream_and_test_environments() -> None:
    cells = expand(load(ROOT / "build_matrix.toml"))
    wheels = {c.wheel for c in cells}
    assert "flash_attn-2.8.3.post2+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl" in wheels
    assert "flash_attn-2.8.3.post2+cu12torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl" in wheels
    dev = select(cells, ["torch=2.14", "python=3.11", "cuda=13.0", "cxx11abi=true"])
    gpu = select(cells, ["torch=2.11", "python=3.12", "cuda=13.0", "cxx11abi=TRUE", "variant=sm90"])
    assert dev and gpu
    assert gpu[0].wheel == "flash_attn-2.8.3.post2+cu13torch2.11cxx11abiTRUE.sm90-cp312-cp312-linux_x86_64.whl"
    assert gpu[0].archs == ("90",)


def test_variant_labels_never_collide_with_standard() -> None:
    cells = expand(load(ROOT / "build_matrix.toml"))
    standard = {c.local_label for c in cells if not c.variant}
    variants = {c.local_label for c in cells if c.variant}
    assert variants and not standard & variants


def test_select_rejects_unknown_key(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["matrix", "--matrix", str(ROOT / "build_matrix.toml"), "--select", "pyton=3.11"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown key 'pyton'" in err and "did you mean 'python'" in err


def test_select_globs_and_alternatives() -> None:
    cells = expand(load(ROOT / "build_matrix.toml"))
    picked = select(cells, ["torch=2.[78]", "python=3.12", "cxx11abi=true", "variant="])
    assert sorted({c.torch for c in picked}) == ["2.7", "2.8"]
    both = select(cells, ["python=3.9", "python=3.10", "torch=2.8", "version=2.8.3.post2", "platform=*x86_64",
                          "variant="])
    assert sorted(c.python for c in both) == ["3.10", "3.9"]


def test_a_patched_variant_layers_its_patches_and_keys_its_costs_apart() -> None:
    """`bench --as-variant sm90lite`: the cell takes the variant's archs and patch folder; its source tree, recorded
    durations and peaks are keyed apart from the plain build's (the code differs; sccache keys the patched text)."""
    config = load(ROOT / "build_matrix.toml")
    plain = select(expand(config), ["package=flash-attn", "torch=2.11", "python=3.12", "variant=sm90"])[0]
    lite = with_variant(config, plain, "sm90lite")
    assert (lite.archs, lite.variant, lite.patches) == (("90",), "sm90lite", "patches/flash-attn/2.8.3.post2/sm90lite")
    assert lite.wheel == "flash_attn-2.8.3.post2+cu13torch2.11cxx11abiTRUE.sm90lite-cp312-cp312-linux_x86_64.whl"
    assert lite.group != plain.group and lite.cost_key != plain.cost_key == "flash-attn-2.8.3.post2-sm90"
    assert [p.relative_to(ROOT).as_posix() for p in build.patch_dirs(config, lite)] == [
        "patches/flash-attn/2.8.3.post2", "patches/flash-attn/2.8.3.post2/sm90lite"]
    paths = build.BuildPaths(ROOT / "w", ROOT / "wh")
    assert paths.group_dir(lite) != paths.group_dir(plain)
    with pytest.raises(BadInput, match="did you mean 'sm90lite'"):
        with_variant(config, plain, "sm90lit")


def test_a_variant_patch_folder_without_patches_stops_its_build(tmp_path: Path) -> None:
    """Checked when a cell of the variant is built (a matrix copied without that folder still loads): exit 2 with
    the toml line of the key."""
    text = MINIMAL.replace('archs = ["90"]', 'archs = ["90"]\npatches = "p/x"', 1)
    (tmp_path / "build_matrix.toml").write_text(text)
    config = load(tmp_path / "build_matrix.toml")
    cell = with_variant(config, expand(config)[0], "sm90")
    with pytest.raises(BadInput) as info:
        build.patch_dirs(config, cell)
    line = text[:text.index('patches = "p/x"')].count("\n") + 1
    assert info.value.exit_code == 2 and f"build_matrix.toml:{line}:" in str(info.value)
    assert "variants.sm90.patches" in str(info.value) and "no *.patch files" in str(info.value)
    (tmp_path / "p" / "x").mkdir(parents=True)
    (tmp_path / "p" / "x" / "0001.patch").write_text("")
    assert build.patch_dirs(config, cell)[-1] == tmp_path / "p" / "x"


# ------------------------------------------------------------- the FA2 matrix people need (issue 18), as data

FA2 = "2.8.3.post2"


@pytest.fixture(scope="module")
def shipped_cells() -> list:
    return expand(load(ROOT / "build_matrix.toml"))

ASKED_TORCH = ["2.6", "2.7", "2.8", "2.9", "2.10", "2.11", "2.12", "2.13", "2.14"]
ASKED_PYTHON = ["3.10", "3.11", "3.12", "3.13", "3.14"]


def test_fa2_matrix_is_every_combination_the_torch_facts_allow() -> None:
    """Derived from the [torch] facts, not from the blocks: for torch 2.6-2.14, each CUDA major (12, 13) a torch
    ships on a platform, each Python 3.10-3.14 it has wheels for and each ABI of that major's builds, 2.8.3.post2
    has exactly one standard cell (x86_64 and aarch64), and nothing else."""
    config = load(ROOT / "build_matrix.toml")
    cells = [c for c in expand(config) if (c.package, c.version, c.variant) == ("flash-attn", FA2, "")
             and c.torch in ASKED_TORCH and c.python in ASKED_PYTHON]
    expected = set()
    for torch in ASKED_TORCH:
        release = config.torch[torch]
        for platform in ("linux_x86_64", "linux_aarch64"):
            builds = release.builds(platform)
            for cuda in [c for c in builds.cuda if c.split(".")[0] in ("12", "13")] if builds else ():
                for abi in builds.abis(cuda):
                    for python in ASKED_PYTHON:
                        if release.python.contains(python):
                            expected.add((torch, cuda.split(".")[0], abi, python, platform))
    got = [(c.torch, c.cuda.split(".")[0], c.cxx11abi, c.python, c.platform) for c in cells]
    assert len(got) == len(set(got)) and set(got) == expected
    assert {c.platform for c in cells} == {"linux_x86_64", "linux_aarch64"}
    assert all(c.wheel.endswith(f"-{c.platform}.whl") for c in cells)


def test_torch_builds_per_abi_and_platform_pick_the_torch_a_cell_compiles_against(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torch 2.6's cu124 is pre-cxx11 and its cu126 cxx11: a cu12 wheel of each ABI compiles against its own;
    aarch64 cells take the aarch64 builds (torch 2.7: cu128 only) and never PyPI's torch (CPU-only there)."""
    from wheelfarm.compat import from_pypi

    config = load(ROOT / "build_matrix.toml")
    assert main(["matrix", "--json", "--select", "version=2.8.3.post2", "python=3.12", "variant=",
                 "torch=2.[67]", "cuda=12.9"]) == 0
    picked = {(c["torch"], c["cxx11abi"], c["platform"]): c["torch_cuda"] for c in json.loads(capsys.readouterr().out)}
    assert picked == {("2.6", False, "linux_x86_64"): "12.4", ("2.6", True, "linux_x86_64"): "12.6",
                      ("2.7", True, "linux_x86_64"): "12.8", ("2.7", True, "linux_aarch64"): "12.8"}
    assert from_pypi(config.torch["2.6"], "12.4", "linux_x86_64")
    assert not from_pypi(config.torch["2.6"], "12.4", "linux_aarch64")


def test_summary_counts_cells_by_axis(capsys: pytest.CaptureFixture[str]) -> None:
    cells = expand(load(ROOT / "build_matrix.toml"))
    assert main(["matrix", "--summary", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["total"] == {"cells": len(cells)} and len(cells) >= 200
    for axis in ("package", "version", "torch", "cuda", "python", "cxx11abi", "platform", "variant"):
        assert sum(counts[axis].values()) == len(cells), axis
    assert counts["platform"]["linux_aarch64"] == len(select(cells, ["platform=linux_aarch64"])) > 50
    assert counts["version"]["flash-attn 2.7.4.post1"] == len(select(cells, ["version=2.7.4.post1"])) > 0
    assert counts["version"]["flash-attn 2.6.3"] == len(select(cells, ["version=2.6.3"])) > 0
    assert list(counts["torch"]).index("2.9") < list(counts["torch"]).index("2.10")  # numeric order
    assert set(ASKED_TORCH) <= set(counts["torch"]) and set(ASKED_PYTHON) <= set(counts["python"])
    assert main(["matrix", "--summary", "--select", "platform=linux_aarch64"]) == 0
    out = capsys.readouterr().out
    assert f"{counts['platform']['linux_aarch64']} cells from build_matrix.toml" in out and "linux_x86_64" not in out


# upstream assets (tests/data/upstream_wheel_names.tsv) that the matrix rebuilds under the very same name; for
# 2.8.3.post2, whose tag and assets are not in any stored snapshot, its post1 assets (same setup.py and
# publish.yml: docs/naming-eras.md) with the version changed
UPSTREAM_CELLS = [
    ("flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl", "2.7.4.post1"),
    ("flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp312-cp312-linux_x86_64.whl", "2.7.4.post1"),
    ("flash_attn-2.8.3.post1+cu12torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl", FA2),
    ("flash_attn-2.8.3.post1+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl", FA2),
    ("flash_attn-2.8.3.post1+cu12torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl", FA2),
    ("flash_attn-2.8.3+cu12torch2.9cxx11abiTRUE-cp312-cp312-linux_aarch64.whl", FA2),
    ("flash_attn-2.8.3+cu13torch2.10cxx11abiTRUE-cp310-cp310-linux_x86_64.whl", FA2),
]


@pytest.mark.parametrize(("upstream", "version"), UPSTREAM_CELLS, ids=[u for u, _ in UPSTREAM_CELLS])
def test_matrix_cells_carry_upstreams_names(upstream: str, version: str, shipped_cells: list) -> None:
    from wheelfarm.naming import parse_wheel_name

    real = {line.split("\t")[0] for line in (ROOT / "tests/data/upstream_wheel_names.tsv").read_text().splitlines()}
    assert upstream in real
    up = parse_wheel_name(upstream)
    cells = [c for c in shipped_cells
             if (c.version, c.torch, c.cxx11abi, c.python_tag, c.platform, c.variant)
             == (version, up.torch, up.cxx11abi, up.python_tag, up.platform, "")
             and c.cuda.split(".")[0] == up.toolkit.split(".")[0]]
    assert [c.wheel for c in cells] == [upstream.replace(f"-{up.version}+", f"-{version}+", 1)]


def test_2_6_3_cells_are_named_by_their_build_toolkit() -> None:
    """2.6.3 spells CUDA major+minor; upstream built 12.3 (cu123), the farm 12.6: cu126, the same convention."""
    from wheelfarm.naming import parse_wheel_name, wheel_name

    up = parse_wheel_name("flash_attn-2.6.3+cu123torch2.4cxx11abiFALSE-cp311-cp311-linux_x86_64.whl")
    (cell,) = select(expand(load(ROOT / "build_matrix.toml")), ["version=2.6.3", "torch=2.4", "python=3.11"])
    assert cell.wheel == wheel_name("flash-attn", "2.6.3", up.torch, cell.cuda, "3.11", up.cxx11abi)
    assert cell.wheel == "flash_attn-2.6.3+cu126torch2.4cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"


WITH_AARCH64 = MINIMAL.replace("[variants.sm90]", '[platforms.linux_aarch64]\nrunner = "arm"\n\n[variants.sm90]')

# (what, edit of WITH_AARCH64, the line's needle, words): the facts that refuse a cell, each with its reason
REFUSED = [
    ("unknown platform", in_block("cxx11abi = [true]\n", 'cxx11abi = [true]\nplatform = ["linux_x86_64", '
                                  '"linux_arm64"]\n'), "platform = [", ["unknown platform 'linux_arm64'"]),
    ("no aarch64 build of that torch", in_block("cxx11abi = [true]\n", 'cxx11abi = [true]\nplatform = '
                                                '["linux_aarch64"]\n'), "[[matrix]]",
     ["impossible cell", "torch 2.4 publishes no linux_aarch64 CUDA build"]),
    ("no build of that ABI", lambda t: t.replace('cxx11abi = [true, false]\n', 'cxx11abi = [true, false]\n'
                                                 'cuda-abi = { "12.4" = [false] }\n'), "[[matrix]]",
     ["torch 2.4 has no CUDA 12.x build with cxx11abi=TRUE", "cu124: FALSE"]),
    ("cuda-abi of a build the torch lacks",
     lambda t: t.replace('cxx11abi = [true, false]\n', 'cxx11abi = [true, false]\ncuda-abi = { "12.6" = [true] }\n'),
     "cuda-abi", ["names CUDA '12.6'", "11.8, 12.4"]),
    ("toolkit outside the version's range", lambda t: t.replace('archs = ["80", "90"]\n',
                                                                'archs = ["80", "90"]\ncuda = "<12.9"\n', 1),
     "[[matrix]]", ["flash-attn 2.8.3.post2 builds with CUDA <12.9 only, not 12.9"]),
    ("C++ standard below torch's", lambda t: t.replace('archs = ["80", "90"]\n', 'archs = ["80", "90"]\n'
                                                       'cxx-std = 17\n', 1).replace(
        'cxx11abi = [true]\n\n[cuda', 'cxx11abi = [true]\ncxx-std = 20\n\n[cuda', 1), "[[matrix]]",
     ["setup.py compiles with -std=c++17, torch 2.8's headers require C++20"]),
    ("bad version specifier", lambda t: t.replace('archs = ["80", "90"]\n', 'archs = ["80", "90"]\n'
                                                  'cuda = "12"\n', 1), 'cuda = "12"', ["not a version specifier"]),
]


@pytest.mark.parametrize(("what", "edit", "needle", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_impossible_cells_are_refused_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      what: str, edit, needle: str, words: list[str]) -> None:
    assert run_cli(tmp_path, WITH_AARCH64, capsys)[0] == 0
    text = edit(WITH_AARCH64)
    assert text != WITH_AARCH64, what
    code, out = run_cli(tmp_path, text, capsys)
    flat = " ".join(out.split())
    assert code == 2, flat
    assert f"build_matrix.toml:{line_of(text, needle)}: " in flat, flat
    for word in words:
        assert word in flat, (word, flat)


def test_exclude_values_may_list_alternatives(tmp_path: Path) -> None:
    path = tmp_path / "build_matrix.toml"
    path.write_text(in_block("cxx11abi = [true]\n", 'cxx11abi = [true]\nexclude = [{ torch = ["2.4", "2.8"], '
                                                   'python = "3.12" }]\n')(MINIMAL))
    assert sorted((c.torch, c.python) for c in expand(load(path))) == [("2.4", "3.11"), ("2.8", "3.11")]
