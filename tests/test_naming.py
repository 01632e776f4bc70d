"""Upstream wheel naming, era by era (docs/naming-eras.md), checked against real upstream file names."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from packaging.utils import canonicalize_version, parse_wheel_filename
from packaging.version import Version

from wheelfarm import naming
from wheelfarm.errors import BadInput

DATA = Path(__file__).parent / "data" / "upstream_wheel_names.tsv"


def _real_names() -> list[tuple[str, str]]:
    with DATA.open(newline="") as handle:
        return [(row["name"], row["source"]) for row in csv.DictReader(handle, delimiter="\t")]


REAL = _real_names()


def _regenerate(parsed: naming.WheelName) -> str:
    return naming.wheel_name(parsed.package, parsed.version, parsed.torch, parsed.toolkit, parsed.python_tag,
                             parsed.cxx11abi, parsed.platform, parsed.variant)


def test_the_table_holds_enough_real_names_with_sources() -> None:
    assert len(REAL) >= 40
    assert len({name for name, _ in REAL}) == len(REAL)
    assert all(source.strip() for _, source in REAL)


@pytest.mark.parametrize("name", [name for name, _ in REAL])
def test_real_name_round_trips(name: str) -> None:
    assert _regenerate(naming.parse_wheel_name(name)) == name


@pytest.mark.parametrize("era", naming.FLASH_ATTN_ERAS, ids=lambda era: str(era.versions))
def test_every_era_has_real_names(era: naming.Era) -> None:
    versions = {naming.parse_wheel_name(name).version for name, _ in REAL}
    assert any(era.versions.contains(Version(version), prereleases=True) for version in versions)


def test_eras_cover_2_0_6_onwards_without_gaps_or_overlaps() -> None:
    probes = ["2.0.6", "2.1.2", "2.2.3.post1", "2.2.3.post2", "2.3.1", "2.3.1.post1", "2.3.5", "2.3.6",
              "2.6.0.post1", "2.6.1", "2.6.3", "2.7.0", "2.8.3", "2.8.3.post1", "2.8.3.post2", "2.8.4",
              "2.9.0.dev1"]
    for probe in probes:
        version = Version(probe)
        matches = [era for era in naming.FLASH_ATTN_ERAS if era.versions.contains(version, prereleases=True)]
        assert len(matches) == 1, probe


@pytest.mark.parametrize(
    ("before", "after"),
    [("2.2.3.post1", "2.2.3.post2"), ("2.3.1", "2.3.1.post1"), ("2.3.5", "2.3.6"), ("2.6.0.post1", "2.6.1"),
     ("2.6.3", "2.7.0"), ("2.8.3", "2.8.3.post1")],
)
def test_era_boundaries(before: str, after: str) -> None:
    assert naming.era("flash-attn", before) != naming.era("flash-attn", after)


# ------------------------------------------------------- the asset name: CUDA tag of the build toolkit

@pytest.mark.parametrize(
    ("version", "toolkit", "tag"),
    [
        ("2.0.6", "11.7.1", "cu117"),
        ("2.1.2.post3", "12.2.0", "cu122"),
        ("2.2.2", "12.1.0", "cu121"),
        ("2.3.6", "12.2.2", "cu122"),
        ("2.6.0.post1", "12.2.2", "cu122"),
        ("2.6.1", "12.3.2", "cu123"),
        ("2.6.3", "12.3", "cu123"),
        ("2.6.3", "11.8.0", "cu118"),
        ("2.6.3", "12.4", "cu124"),  # pure naming: upstream never built it, the name is still spelled
        ("2.7.0", "12.4", "cu12"),
        ("2.7.0.post1", "11.8.0", "cu11"),
        ("2.8.3", "12.9.1", "cu12"),
        ("2.8.3", "13.0", "cu13"),  # upstream's later cu13 assets on the v2.8.3 release (issue #2255)
        ("2.8.3.post2", "12.9.1", "cu12"),
        ("2.8.3.post2", "13.0", "cu13"),
        ("2.8.4", "13.2", "cu13"),
        ("2.9.0.dev1", "13.0.2", "cu13"),
    ],
)
def test_cuda_tag_per_era(version: str, toolkit: str, tag: str) -> None:
    assert naming.cuda_tag("flash-attn", version, toolkit) == tag


@pytest.mark.parametrize(
    ("version", "cuda"), [("2.0.5", "11.8"), ("1.0.9", "11.8"), ("2.6.3", "12"), ("2.6.3", "cu123")]
)
def test_cuda_tag_refusals_are_clear_value_errors(version: str, cuda: str) -> None:
    with pytest.raises(ValueError, match=r"flash-attn|cuda") as caught:
        naming.cuda_tag("flash-attn", version, cuda)
    assert isinstance(caught.value, BadInput) and caught.value.exit_code == 2


# ----------------------------------------------------------- what setup.py asks for (torch.version.cuda)

@pytest.mark.parametrize(
    ("version", "torch_cuda", "torch", "tag"),
    [
        ("2.0.6", "11.7", None, "cu117"),
        ("2.1.1", "12.1", None, "cu121"),
        ("2.2.3.post2", "11.8", "2.1.0", "cu122"),  # torch 2.1 -> 12.2 even for a CUDA 11 torch (as upstream)
        ("2.2.3.post2", "11.8", "2.0.1", "cu118"),
        ("2.3.1.post1", "11.8", "2.1.2", "cu118"),
        ("2.3.1.post1", "12.1", "2.1.2+cu121", "cu122"),
        ("2.5.8", "11.7", None, "cu118"),
        ("2.5.8", "12.1", None, "cu122"),
        ("2.5.8", "12.4", None, "cu122"),
        ("2.6.3", "12.1", None, "cu123"),
        ("2.6.3", "12.4", None, "cu123"),
        ("2.6.3", "11.8", None, "cu118"),
        ("2.7.0", "11.8", None, "cu11"),
        ("2.7.4.post1", "12.6", None, "cu12"),
        ("2.8.3", "13.0", None, "cu12"),  # fixed in 2.8.3.post1
        ("2.8.3.post1", "13.0", None, "cu13"),
        ("2.8.3.post2", "12.8", None, "cu12"),
        ("2.8.3.post2", "13.2", None, "cu13"),
    ],
)
def test_setup_py_cuda_tag(version: str, torch_cuda: str, torch: str | None, tag: str) -> None:
    assert naming.setup_py_cuda_tag("flash-attn", version, torch_cuda, torch) == tag


def test_setup_py_needs_torch_where_upstream_special_cased_torch_2_1() -> None:
    with pytest.raises(ValueError, match="torch"):
        naming.setup_py_cuda_tag("flash-attn", "2.3.0", "12.1")


def test_2_8_3_built_with_cuda_13_is_named_cu13_but_its_setup_py_asks_for_cu12() -> None:
    assert naming.cuda_tag("flash-attn", "2.8.3", "13.0") == "cu13"
    assert naming.setup_py_cuda_tag("flash-attn", "2.8.3", "13.0") == "cu12"


# ------------------------------------------------------------------------------------------ other packages

def test_fixture_package_follows_the_newest_era() -> None:
    name = naming.wheel_name("fixture-attn", "0.1.0", "2.14.1", "13.0.2", "3.11", True)
    assert name == "fixture_attn-0.1.0+cu13torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    assert naming.setup_py_cuda_tag("fixture-attn", "0.1.0", "13.0") == "cu13"
    assert naming.parse_wheel_name(name).package == "fixture-attn"


def test_distribution_part_is_normalised_like_upstream() -> None:
    for spelling in ("flash-attn", "flash_attn", "Flash.Attn"):
        name = naming.wheel_name(spelling, "2.8.3.post2", "2.8", "12.9", "3.12", True)
        assert name.startswith("flash_attn-2.8.3.post2+cu12torch2.8cxx11abiTRUE-")


def test_naming_does_not_judge_possibility() -> None:
    name = naming.wheel_name("flash-attn", "2.6.3", "1.12", "13.0", "3.14", False, "linux_aarch64")
    assert name == "flash_attn-2.6.3+cu130torch1.12cxx11abiFALSE-cp314-cp314-linux_aarch64.whl"


# -------------------------------------------------------------------------------------------- small pieces

@pytest.mark.parametrize(
    ("python", "tag"), [("3.12", "cp312"), ("3.9.18", "cp39"), ("cp313", "cp313"), ("3.7", "cp37")]
)
def test_python_tag(python: str, tag: str) -> None:
    assert naming.python_tag(python) == tag


def test_python_3_7_has_the_m_abi_suffix() -> None:
    name = naming.wheel_name("flash-attn", "2.3.3", "1.12", "11.8", "3.7", False)
    assert name.endswith("-cp37-cp37m-linux_x86_64.whl")


@pytest.mark.parametrize(
    ("torch", "tag"), [("2.4.1", "2.4"), ("2.4", "2.4"), ("2.10.0", "2.10"), ("2.6.0.dev20241001", "2.6"),
                       ("2.4.0+cu121", "2.4")],
)
def test_torch_tag(torch: str, tag: str) -> None:
    assert naming.torch_tag(torch) == tag


@pytest.mark.parametrize("bad", ["2", "two", ""])
def test_torch_tag_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        naming.torch_tag(bad)


@pytest.mark.parametrize(
    ("tag", "toolkit"), [("cu118", "11.8"), ("cu12", "12"), ("cu130", "13.0"), ("cu102", "10.2")]
)
def test_toolkit_for_cuda_tag(tag: str, toolkit: str) -> None:
    assert naming.toolkit_for_cuda_tag(tag) == toolkit


# ---------------------------------------------------------------------------------------- variants, METADATA

def test_variant_label_is_distinct_and_pep440_valid() -> None:
    standard = naming.local_label("flash-attn", "2.8.3.post2", "2.8", "12.9", True)
    variant = naming.local_label("flash-attn", "2.8.3.post2", "2.8", "12.9", True, "sm90")
    assert standard == "cu12torch2.8cxx11abiTRUE"
    assert variant == "cu12torch2.8cxx11abiTRUE.sm90"
    assert Version(f"2.8.3.post2+{standard}") != Version(f"2.8.3.post2+{variant}")


def test_variant_round_trips_through_the_file_name() -> None:
    name = naming.wheel_name("flash-attn", "2.8.3.post2", "2.11", "13.0", "3.12", True, variant="sm90")
    assert name == "flash_attn-2.8.3.post2+cu13torch2.11cxx11abiTRUE.sm90-cp312-cp312-linux_x86_64.whl"
    parsed = naming.parse_wheel_name(name)
    assert parsed.variant == "sm90"
    assert _regenerate(parsed) == name


@pytest.mark.parametrize("bad", ["SM90", "sm_90", "sm-90", "sm90.", ".sm90", "sm 90"])
def test_variant_refuses_non_canonical_spellings(bad: str) -> None:
    with pytest.raises(ValueError, match="variant"):
        naming.local_label("flash-attn", "2.8.3.post2", "2.8", "12.9", True, bad)


@pytest.mark.parametrize("variant", ["", "sm90", "sm90.sm100"])
@pytest.mark.parametrize(
    ("version", "torch", "cuda"), [("2.8.3.post2", "2.8.0", "12.9.1"), ("2.6.3", "2.4", "12.3")]
)
def test_metadata_version_equals_file_name_version(version: str, torch: str, cuda: str, variant: str) -> None:
    metadata = naming.wheel_version("flash-attn", version, torch, cuda, True, variant)
    name = naming.wheel_name("flash-attn", version, torch, cuda, "3.12", True, variant=variant)
    assert name.split("-")[1] == metadata
    assert canonicalize_version(metadata) == canonicalize_version(parse_wheel_filename(name)[1])


def test_wheel_version_example() -> None:
    version = naming.wheel_version("flash-attn", "2.8.3.post2", "2.8", "12.9", True)
    assert version == "2.8.3.post2+cu12torch2.8cxx11abiTRUE"


def test_wheel_version_refuses_a_local_version_and_non_bool_abi() -> None:
    with pytest.raises(ValueError, match="local"):
        naming.wheel_version("flash-attn", "2.8.3+cu12", "2.8", "12.9", True)
    with pytest.raises(TypeError):
        naming.wheel_version("flash-attn", "2.8.3", "2.8", "12.9", "FALSE")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize(
    "bad",
    [
        "flash_attn-2.8.3-cp312-cp312-linux_x86_64.whl",  # no local label
        "flash_attn-2.6.3+cu124torch2.5-cp312-cp312-linux_x86_64.whl",  # no cxx11abi part
        "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-py3-none-any.whl",
        "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312m-linux_x86_64.whl",
        "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-1-cp312-cp312-linux_x86_64.whl",  # build tag
        "flash_attn-2.8.3.tar.gz",
    ],
)
def test_parse_refuses_names_outside_the_convention(bad: str) -> None:
    with pytest.raises(ValueError):
        naming.parse_wheel_name(bad)


def test_platform_must_be_a_wheel_tag() -> None:
    with pytest.raises(ValueError, match="platform"):
        naming.wheel_name("flash-attn", "2.8.3", "2.8", "12.9", "3.12", True, "linux-x86_64")


@pytest.mark.parametrize("version", ["2.6.3", "2.7.4.post1", "2.8.3.post1"])
def test_the_matrixs_older_releases_have_real_names_that_regenerate(version: str) -> None:
    """The FA2 versions build_matrix.toml builds (2.8.3.post2 shares post1's setup.py and publish.yml): real
    upstream assets of each, regenerated from their fields by wheel_name."""
    names = [name for name, _ in REAL if naming.parse_wheel_name(name).version == version]
    assert len(names) >= 2, version
    for name in names:
        assert _regenerate(naming.parse_wheel_name(name)) == name
