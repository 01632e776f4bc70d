"""``data/images.toml``: the known-images table is data, so these tests check the data itself — every row complete
and typed, each fact with a source, and each row consistent with what its name says and with build_matrix.toml's
torch facts. No network, no images: the facts inside an image are checked by the command in docs/images.md.

Stand-ins: none. The table and build_matrix.toml are read as shipped (tomllib); torch versions are parsed with
packaging.
"""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from itertools import pairwise
from pathlib import Path

import pytest
import tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
IMAGES: dict[str, dict] = tomllib.loads(
    resources.files("wheelfarm").joinpath("data/images.toml").read_text()
)["images"]
TORCH_FACTS: dict[str, dict] = tomllib.loads((ROOT / "build_matrix.toml").read_text())["torch"]

FACTS = ("python", "torch", "cuda", "cxx11abi", "glibc")
KEYS = {"family", "python", "torch", "torch-local", "cuda", "cxx11abi", "glibc", "os", "machines", "verified",
        "sources", "note", "gap-before"}
GLIBC_OF_UBUNTU = {"18.04": "2.27", "20.04": "2.31", "22.04": "2.35", "24.04": "2.39"}
X_Y = re.compile(r"^\d+\.\d+$")
PYTORCH_TAG = re.compile(r"^pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>\d+\.\d+)-cudnn\d+-(devel|runtime)$")
NGC_TAG = re.compile(r"^nvcr\.io/nvidia/pytorch:(?P<yy>\d\d)\.(?P<mm>\d\d)-py3$")
AWS_DLC = re.compile(r"/huggingface-pytorch-training:(?P<torch>\d+\.\d+\.\d+)-transformers[\d.]+-gpu-py3(?P<py>\d+)"
                     r"-cu(?P<cuda>\d+)-ubuntu(?P<os>\d+\.\d+)$")
GCP_DLC = re.compile(r"/huggingface-pytorch-training-cu(?P<cuda>\d+)\.(?P<torch>\d+-\d+)\.transformers\.\d+-\d+"
                     r"\.ubuntu(?P<os>\d{4})\.py3(?P<py>\d+)$")


def rows(family: str) -> list[tuple[str, dict]]:
    return [(name, row) for name, row in IMAGES.items() if row["family"] == family]


def x_y(version: str) -> str:
    v = Version(version)
    return f"{v.major}.{v.minor}"


def pip_wheel_abi(torch: str, cuda: str) -> bool:
    """The C++ ABI of PyTorch's own Linux builds (what pytorch/pytorch images and pip-installed DLCs carry): pre-cxx11
    before 2.7, except 2.6's cu126 wheels (manylinux_2_28); cxx11 from 2.7 (build_matrix.toml's [torch.*] notes)."""
    return Version(torch) >= Version("2.7") or (x_y(torch) == "2.6" and cuda == "12.6")


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_row_is_complete_and_typed(name: str) -> None:
    row = IMAGES[name]
    assert set(row) <= KEYS, f"unknown keys {set(row) - KEYS}"
    assert row["family"] in ("pytorch", "ngc", "hf-dlc")
    assert isinstance(row["python"], str) and X_Y.match(row["python"])
    assert isinstance(row["torch"], str) and "+" not in row["torch"]
    Version(row["torch"])  # parses, or raises InvalidVersion
    if "torch-local" in row:
        assert re.fullmatch(r"\+[0-9a-f]{7,12}", row["torch-local"])
        Version(row["torch"] + row["torch-local"])
    assert isinstance(row["cuda"], str) and X_Y.match(row["cuda"])
    assert isinstance(row["cxx11abi"], bool) and isinstance(row["verified"], bool)
    assert re.fullmatch(r"Ubuntu (\d\d\.\d\d)", row["os"])
    assert row["glibc"] == GLIBC_OF_UBUNTU[row["os"].split()[1]]
    assert set(row.get("machines", ["x86_64"])) <= {"x86_64", "aarch64"}
    sources = row["sources"]
    for fact in FACTS:
        assert isinstance(sources.get(fact), str) and len(sources[fact]) > 10, f"no source for {fact}"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_verified_rows_cite_a_document_for_every_fact(name: str) -> None:
    row = IMAGES[name]
    hedged = [f for f, s in row["sources"].items() if s.startswith(("inferred", "unverified"))]
    if row["verified"]:
        assert not hedged, f"verified, yet {hedged} are inferred or unverified"
    else:
        assert hedged, "every fact has a document: mark the row verified"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_family_matches_the_name(name: str) -> None:
    family = IMAGES[name]["family"]
    by_name = {"pytorch": PYTORCH_TAG, "ngc": NGC_TAG}
    if family in by_name:
        assert by_name[family].match(name)
    else:
        assert AWS_DLC.search(name) or GCP_DLC.search(name)
    assert not any(p.match(name) for f, p in by_name.items() if f != family)


@pytest.mark.parametrize("name", [n for n, _ in rows("pytorch")])
def test_pytorch_rows_agree_with_their_tag_and_the_torch_facts(name: str) -> None:
    row = IMAGES[name]
    tag = PYTORCH_TAG.match(name)
    assert tag and (row["torch"], row["cuda"]) == (tag["torch"], tag["cuda"])
    facts = TORCH_FACTS[x_y(row["torch"])]
    assert row["cuda"] in facts["cuda"], f"torch {x_y(row['torch'])} ships no cu{row['cuda']} build"
    assert row["cxx11abi"] in facts["cxx11abi"]
    assert row["cxx11abi"] == pip_wheel_abi(row["torch"], row["cuda"])
    assert Version(row["python"] + ".0") in SpecifierSet(facts["python"])


def test_pytorch_rows_cover_every_cuda_of_every_release_devel_and_runtime() -> None:
    """Each torch patch release present has a devel and a runtime row per CUDA; each release line 2.0 … newest
    in build_matrix.toml is present."""
    seen: dict[str, set[tuple[str, str]]] = {}
    for name, row in rows("pytorch"):
        seen.setdefault(row["torch"], set()).add((row["cuda"], name.rsplit("-", 1)[1]))
    for torch, cells in seen.items():
        cudas = {c for c, _ in cells}
        assert cells == {(c, k) for c in cudas for k in ("devel", "runtime")}, torch
    assert {x_y(t) for t in seen} == set(TORCH_FACTS)


def test_ngc_rows_are_consecutive_months_with_the_cxx11_abi() -> None:
    months: list[tuple[int, int]] = []
    for name, row in rows("ngc"):
        tag = NGC_TAG.match(name)
        assert tag and row["cxx11abi"] is True
        assert set(row["machines"]) == {"x86_64", "aarch64"}
        months.append((int(tag["yy"]), int(tag["mm"])))
    months.sort()
    assert months[0] == (23, 1)
    for (y0, m0), (y1, m1) in pairwise(months):
        following = (y0 + (m0 == 12), m0 % 12 + 1)
        if (y1, m1) != following:
            reason = IMAGES[f"nvcr.io/nvidia/pytorch:{y1:02d}.{m1:02d}-py3"].get("gap-before")
            assert reason, f"no row for {following} and {y1:02d}.{m1:02d} gives no gap-before reason"


def test_ngc_torch_versions_never_go_back_more_than_a_month() -> None:
    """NGC ships a pre-release of the next torch each month; the 23.05 container (2.0.0 after 23.04's 2.1.0a0) is
    the one documented step back, so any other decrease is a typo in the table."""
    ordered = sorted(rows("ngc"), key=lambda r: r[0])
    steps_back = [b for (_, a), (b, rb) in pairwise(ordered)
                  if Version(rb["torch"]) < Version(a["torch"])]
    assert steps_back == ["nvcr.io/nvidia/pytorch:23.05-py3"]


@pytest.mark.parametrize("name", [n for n, _ in rows("hf-dlc")])
def test_dlc_rows_agree_with_their_name(name: str) -> None:
    row = IMAGES[name]
    if m := AWS_DLC.search(name):
        assert row["torch"] == m["torch"] and row["os"] == f"Ubuntu {m['os']}"
    else:
        m = GCP_DLC.search(name)
        assert m and x_y(row["torch"]) == m["torch"].replace("-", ".")
        assert row["os"] == f"Ubuntu {m['os'][:2]}.{m['os'][2:]}"
    assert row["python"] == f"3.{m['py']}"
    assert row["cuda"].replace(".", "") == m["cuda"]
    if x_y(row["torch"]) in TORCH_FACTS:
        assert row["cuda"] in TORCH_FACTS[x_y(row["torch"])]["cuda"]
    if Version(row["torch"]) >= Version("2.7"):
        assert row["cxx11abi"] is True


def test_counts_per_family() -> None:
    counts = Counter(row["family"] for row in IMAGES.values())
    assert counts["pytorch"] >= 60 and counts["ngc"] >= 35 and counts["hf-dlc"] >= 1, counts
