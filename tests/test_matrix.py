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
    gpu = select(cells, ["torch=2.11", "python=3.12", "cuda=13.0", "cxx11abi=TRUE"])
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
    both = select(cells, ["python=3.9", "python=3.10", "torch=2.8"])
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
