"""``resolve``: the pure decision over (environment, wheel names) for many environments, the image table, the
interpreter probe, and the CLI against a local mirror (file:// and http://127.0.0.1)."""

from __future__ import annotations

import functools
import json
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wheelfarm import cli, gpus, naming
from wheelfarm.environment import Env, image_env, inspect_env, min_arch
from wheelfarm.errors import BadInput
from wheelfarm.resolve import available_wheels, decide, mirror_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FA = "2.8.3.post2"


def fa(
    torch: str,
    cuda: str,
    python: str,
    abi: bool,
    variant: str = "",
    platform: str = "linux_x86_64",
    version: str = FA,
) -> str:
    return naming.wheel_name("flash-attn", version, torch, cuda, python, abi, platform, variant)


MIRROR = [
    *(
        fa(t, "12.9", py, abi)
        for t in ("2.6", "2.7")
        for py in ("3.10", "3.11", "3.12")
        for abi in (True, False)
    ),
    *(fa("2.8", "12.9", py, True) for py in ("3.10", "3.11", "3.12")),
    fa("2.14", "13.0", "3.11", True, variant="sm90"),
    fa("2.11", "13.0", "3.12", True, variant="sm90"),
    fa("2.11", "13.0", "3.12", True),
    "not-a-wheel.txt",
    "other_pkg-1.0-py3-none-any.whl",
]


def env(
    torch: str | None = "2.8.0",
    cuda: str | None = "12.8",
    python: str = "3.11",
    abi: bool | None = True,
    gpu: tuple[int, int] | None = (8, 0),
    glibc: str = "2.35",
) -> Env:
    return Env(python=python, torch=torch, cuda=cuda, cxx11abi=abi, glibc=glibc, gpu=gpu)


def pick(e: Env, files: list[str] = MIRROR) -> str | None:
    return decide(e, files, mirror="https://mirror.example", min_arch=80).wheel


# ---------------------------------------------------------------------------------- the pure decision


def test_a100_with_pytorch_wheels_torch_2_8() -> None:
    d = decide(env(), MIRROR, mirror="https://mirror.example/", min_arch=80)
    assert d.ok and d.wheel == fa("2.8", "12.9", "3.11", True)
    assert d.variant == "cu12torch2.8cxx11abiTRUE"
    assert d.index_url == "https://mirror.example/cu12torch2.8cxx11abiTRUE/simple/"
    assert d.install and f"flash-attn=={FA}+cu12torch2.8cxx11abiTRUE" in d.install


def test_pre_cxx11_abi_torch_2_6_gets_the_abi_false_wheel() -> None:
    assert pick(env(torch="2.6.0", cuda="12.4", python="3.10", abi=False)) == fa("2.6", "12.9", "3.10", False)


def test_h100_prefers_the_standard_build_over_the_sm90_variant() -> None:
    h100 = env(torch="2.11.0", cuda="13.0", python="3.12", gpu=(9, 0))
    assert pick(h100) == fa("2.11", "13.0", "3.12", True)
    only_variant = [f for f in MIRROR if f != fa("2.11", "13.0", "3.12", True)]
    assert pick(h100, only_variant) == fa("2.11", "13.0", "3.12", True, variant="sm90")


def test_sm90_variant_does_not_fit_an_a100() -> None:
    d = decide(env(torch="2.14.1", cuda="13.0", python="3.11", gpu=(8, 0)), MIRROR, min_arch=80)
    assert not d.ok
    assert "variant sm90 has code for sm90 only, the GPU is sm80" in d.nearest[0]


def test_t4_is_unsupported_whatever_the_mirror_holds() -> None:
    d = decide(env(gpu=(7, 5)), MIRROR, min_arch=80)
    assert not d.ok and not d.nearest and d.build_command is None
    assert "sm75 is unsupported by flash-attn" in d.reasons[0] and "sm80" in d.reasons[0]


def test_missing_cell_names_the_nearest_and_the_build_command() -> None:
    d = decide(env(torch="2.9.1", cuda="12.8", python="3.12", gpu=(9, 0)), MIRROR, min_arch=80)
    assert not d.ok and "no flash-attn wheel on the mirror fits" in d.reasons[0]
    assert len(d.nearest) == 3 and all("torch 2." in n and "≠ 2.9" in n for n in d.nearest)
    assert d.build_command == (
        "nox -s build -- --select package=flash-attn version=2.8.3.post2 torch=2.9 cuda=12.* python=3.12 "
        "cxx11abi=TRUE platform=linux_x86_64 variant="
    )


def test_cuda_tag_follows_the_naming_era() -> None:
    old = [
        fa("2.4", "12.3", "3.11", False, version="2.6.3"),
        fa("2.4", "11.8", "3.11", False, version="2.6.3"),
    ]
    assert "cu123" in old[0]
    # 2.6.3's setup.py asks for cu123 for any CUDA 12 torch, cu118 for CUDA 11
    assert pick(env(torch="2.4.1", cuda="12.4", abi=False), old) == old[0]
    assert pick(env(torch="2.4.1", cuda="11.8", abi=False), old) == old[1]


def test_cpu_torch_and_no_torch() -> None:
    assert "not a CUDA build (CPU-only, or ROCm)" in decide(env(cuda=None), MIRROR).reasons[0]
    assert "torch is not installed" in decide(env(torch=None, cuda=None, abi=None), MIRROR).reasons[0]


def test_glibc_floor_of_manylinux_wheels() -> None:
    wheel = fa("2.8", "12.9", "3.11", True, platform="manylinux_2_28_x86_64")
    assert pick(env(glibc="2.28"), [wheel]) == wheel
    d = decide(env(glibc="2.27"), [wheel])
    assert not d.ok and "needs glibc 2.28, the environment has 2.27" in d.nearest[0]
    assert not decide(Env("3.11", "2.8.0", "12.8", True, "2.35", None, "aarch64"), [wheel]).ok


def test_no_gpu_is_a_note_not_a_refusal() -> None:
    d = decide(env(gpu=None), MIRROR)
    assert d.ok and d.notes == ("no GPU seen: the GPU architecture was not checked",)


def test_empty_mirror() -> None:
    d = decide(env(), [])
    assert not d.ok and d.reasons == ("the mirror has no flash-attn wheels",) and d.build_command


# ----------------------------------------------------------------------------------- environments


def test_image_table() -> None:
    ngc = image_env("nvcr.io/nvidia/pytorch:25.12-py3")
    assert (ngc.python, ngc.torch, ngc.cuda, ngc.cxx11abi, ngc.glibc) == (
        "3.12",
        "2.10.0a0",
        "13.1",
        True,
        "2.39",
    )
    old = image_env("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel")
    assert old.cxx11abi is False
    with pytest.raises(BadInput, match=r"did you mean.*2\.8\.0-cuda12\.8-cudnn9-devel"):
        image_env("pytorch/pytorch:2.8.0-cuda12.8-cudnn9")


def test_min_arch_mirrors_the_matrix() -> None:
    matrix = Path(__file__).resolve().parents[1] / "build_matrix.toml"
    if not matrix.is_file():
        pytest.skip("no build_matrix.toml")
    packages = tomllib.loads(matrix.read_text())["packages"]
    assert min_arch("flash-attn") == packages["flash-attn"]["min-arch"] == 80
    for name, table in packages.items():  # every package's floor, FlashAttention-3's too
        assert min_arch(name) == table.get("min-arch"), name


def test_inspect_env_probes_this_interpreter() -> None:
    e = inspect_env()
    assert e.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert e.glibc and e.glibc[0].isdigit()
    assert e.torch is None or e.cxx11abi in (True, False)


# --------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A mirror with index pages only (resolve reads the global simple/ page)."""
    from wheelfarm.index import Entry, build_pages

    entries = [
        Entry(f, "flash-attn", "0" * 64, ">=3.9", f.split("-")[1].partition("+")[2], None)
        for f in MIRROR
        if f.startswith("flash_attn")
    ]
    for path, data in build_pages(entries).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    return tmp_path


@pytest.fixture
def served(mirror: Path) -> Iterator[str]:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_cli_with_an_image_over_http(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "resolve",
            "--index-url",
            served + "/simple/",
            "--image",
            "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel",
            "--gpu",
            "sm90",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"]
    assert out["wheel"] == fa("2.8", "12.9", "3.11", True)
    assert out["index_url"] == f"{served}/cu12torch2.8cxx11abiTRUE/simple/"


def test_cli_t4_and_missing_cell_from_a_directory(mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = "nvcr.io/nvidia/pytorch:25.12-py3"
    assert cli.main(["resolve", "--index-url", str(mirror), "--image", image, "--gpu", "7.5"]) == 1
    assert "sm75 is unsupported" in capsys.readouterr().out
    assert cli.main(["resolve", "--index-url", str(mirror), "--image", image, "--gpu", "sm90"]) == 1
    out = capsys.readouterr().out
    assert "nearest:" in out and "pre-release build" in out  # NGC's torch 2.10.0a0: build against that very torch
    assert ('wheelfarm build --backend host --python "$(command -v python)" --cuda-home "${CUDA_HOME:-/usr/local/cuda}"'
            " --select package=flash-attn version=2.8.3.post2 torch=2.10 cuda=13.* python=3.12 cxx11abi=TRUE") in out
    assert mirror_url(str(mirror)) == mirror.resolve().as_uri()


@pytest.mark.parametrize(("given", "want"), [
    *((f"sm{m}{n}", (m, n)) for m, n in [(8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 1), (10, 3), (11, 0),
                                          (12, 0), (12, 1)]),
    ("sm_90a", (9, 0)), ("sm_100f", (10, 0)), ("compute_120", (12, 0)), ("SM121", (12, 1)), ("12.0", (12, 0)),
    ("7.5", (7, 5)), ("T4", (7, 5)), ("Tesla T4", (7, 5)), ("A100", (8, 0)), ("NVIDIA A10G", (8, 6)),
    ("L4", (8, 9)), ("H100", (9, 0)), ("h200", (9, 0)), ("RTX 4090", (8, 9)), ("GeForce RTX 5090", (12, 0)),
    ("B200", (10, 0)), ("rtx-pro-6000", (12, 0)), ("DGX Spark", (12, 1)),
])
def test_gpu_names_and_every_sm_from_80_to_121(given: str, want: tuple[int, int]) -> None:
    """sm100 and sm120 are Blackwell, not sm10/sm12: the minor is the last digit; card names map by the table."""
    assert gpus.capability(given) == want


def test_unknown_gpu_is_bad_input_listing_the_names() -> None:
    with pytest.raises(BadInput, match="not a compute capability") as err:
        gpus.capability("Voodoo 5")
    assert "rtx4090" in str(err.value.hint)


def test_cli_accepts_blackwell_and_card_names(mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel"  # a PyPI torch built with CUDA 12.8: Blackwell runs
    for gpu, sm in (("sm120", "sm120"), ("RTX 5090", "sm120"), ("B200", "sm100"), ("NVIDIA B200", "sm100")):
        assert cli.main(["resolve", "--index-url", str(mirror), "--image", image, "--gpu", gpu]) == 0
        out = capsys.readouterr().out
        assert f"GPU {sm} [" in out and "wheel:       flash_attn-2.8.3.post2+cu12torch2.8cxx11abiTRUE-cp311" in out
    assert cli.main(["resolve", "--index-url", str(mirror), "--image", image, "--gpu", "T4"]) == 1
    assert "sm75 is unsupported" in capsys.readouterr().out


def test_a_variant_index_url_names_the_same_mirror() -> None:
    """`--index-url …/cu12torch2.8cxx11abiTRUE/simple` (what the README's pip line uses) is the mirror's root
    plus a variant, not a root below it: the install line must not double the variant."""
    root = "https://wheels.example/m"
    for given in (f"{root}", f"{root}/", f"{root}/simple", f"{root}/simple/",
                  f"{root}/cu12torch2.8cxx11abiTRUE/simple/", f"{root}/cu13torch2.11cxx11abiTRUE.sm90lite/simple",
                  f"{root}/cu12torch2.8cxx11abiTRUE.sm90", f"{root}/simple/flash-attn/",
                  f"{root}/cu12torch2.8cxx11abiTRUE/simple/flash-attn"):
        assert mirror_url(given) == root, given


def test_a_missing_mirror_is_not_an_empty_one(mirror: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no wheelfarm mirror there"):
        available_wheels(mirror_url(str(tmp_path / "nothing-here")), "flash-attn")
    assert available_wheels(mirror_url(str(mirror)), "no-such-project") == []
