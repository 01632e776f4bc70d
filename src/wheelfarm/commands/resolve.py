"""``wheelfarm resolve``: the mirror index and wheel that fit an environment, the lines to paste, or why not."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .. import gpus
from ..environment import Env, from_probe, image_env, image_rows, inspect_env, manual_env, min_arch
from ..errors import BadInput
from ..resolve import MirrorView, against_matrix, decide, mirror_url

NAME = "resolve"
HELP = (
    "Print the variant index, wheel and install lines that fit an environment — this one, a Python (--python), a "
    "known image (--image), the mirror's probe output (--env) or facts given by hand (--torch/--cuda/...) — or why "
    "none fits and the command that builds it."
)
_MANUAL = ("torch", "cuda", "cxx11abi", "glibc")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index-url",
        default=os.environ.get("WHEELFARM_INDEX_URL", "mirror"),
        help="the mirror root (holding simple/ and <variant>/simple/): URL or directory "
        "(default: $WHEELFARM_INDEX_URL, else ./mirror)",
    )
    parser.add_argument("--package", default="flash-attn")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", help="a known image (wheelfarm/data/images.toml; --list-images), e.g. "
                        "nvcr.io/nvidia/pytorch:25.12-py3")
    source.add_argument("--env", metavar="FILE", help="the JSON printed by the mirror's probe.py "
                        "(python -c \"$(curl -fsSL <mirror>/probe.py)\"); - reads standard input")
    source.add_argument("--list-images", action="store_true", help="print the known images and their facts")
    parser.add_argument("--python", help="X.Y: the Python of an environment given by hand; a path or command: "
                        "probe that interpreter instead of this one")
    parser.add_argument("--torch", help="by hand: torch.__version__ (2.8.0, 2.6.0a0+ecf3bae40a)")
    parser.add_argument("--cuda", help="by hand: torch.version.cuda (12.8), or cpu")
    parser.add_argument("--cxx11abi", help="by hand: torch._C._GLIBCXX_USE_CXX11_ABI, TRUE or FALSE "
                        "(default: PyPI torch's, TRUE from 2.7)")
    parser.add_argument("--glibc", help="by hand: ldd --version (2.35)")
    parser.add_argument("--machine", help="x86_64 or aarch64 (by hand, or which build of a multi-arch --image)")
    parser.add_argument("--gpu", help="assume this GPU: sm80, sm_90a, 12.0, sm121, or a name (T4, A100, L4, H100, "
                        "\"RTX 4090\", B200)")
    parser.add_argument("--matrix", type=Path, help="check the printed build command against this "
                        "build_matrix.toml (default: ./build_matrix.toml when there is one)")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def _environment(args: argparse.Namespace) -> Env:
    manual = [f"--{k}" for k in _MANUAL if getattr(args, k) is not None]
    python_version = args.python and args.python.replace(".", "", 1).isdigit()
    if args.image or args.env:
        if manual or args.python:
            raise BadInput(f"{' '.join(manual) or '--python'} with --{'image' if args.image else 'env'}: "
                           "give the environment one way")
        if args.image:
            return image_env(args.image, args.machine)
        text = sys.stdin.read() if args.env == "-" else _read(args.env)
        return from_probe(text, source="standard input" if args.env == "-" else args.env)
    if manual or python_version:
        if not (args.torch and python_version):
            raise BadInput("an environment by hand needs at least --python X.Y and --torch (and --cuda)",
                           hint="e.g. --python 3.12 --torch 2.8.0 --cuda 12.8 --cxx11abi TRUE --glibc 2.35 --gpu L4")
        return manual_env(python=args.python, torch=args.torch, cuda=args.cuda, cxx11abi=args.cxx11abi,
                          glibc=args.glibc, machine=args.machine or "x86_64")
    return inspect_env(args.python)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise BadInput(f"--env {path}: cannot read it ({exc.strerror})") from exc


def _list_images() -> int:
    for name, row in image_rows():
        flag = "" if row.get("verified", False) else "  (unverified)"
        abi = str(row["cxx11abi"]).upper()
        print(f"{name}\n    python {row['python']}  torch {row['torch']}  CUDA {row['cuda']}  cxx11abi {abi}  "
              f"glibc {row['glibc']}{flag}")
    return 0


def execute(args: argparse.Namespace) -> int:
    if args.list_images:
        return _list_images()
    env = _environment(args)
    if args.gpu:
        env = dataclasses.replace(env, gpu=gpus.capability(args.gpu))
    mirror = mirror_url(args.index_url)
    view = MirrorView(mirror, args.package)
    decision = decide(env, view.files, package=args.package, mirror=mirror, min_arch=min_arch(args.package),
                      audit=view.audit)
    matrix = args.matrix or (Path("build_matrix.toml") if Path("build_matrix.toml").is_file() else None)
    if matrix:
        decision = against_matrix(decision, env, args.package, matrix)
    if args.json:
        print(json.dumps(dataclasses.asdict(decision), indent=2))
        return 0 if decision.ok else 1
    print(f"environment: {decision.env}")
    if decision.ok:
        print(f"wheel:       {decision.wheel}")
        print(f"index:       {decision.index_url}")
        for form, line in decision.lines.items():
            head, *rest = line.splitlines()
            print(f"{form + ':':<18} {head}")
            for more in rest:
                print(f"{'':<18} {more}")
    else:
        for reason in decision.reasons:
            print(f"no wheel:    {reason}")
        for near in decision.nearest:
            print(f"nearest:     {near}")
        if decision.build_command:
            print(f"build it:    {decision.build_command}")
    for note in decision.notes:
        print(f"note:        {note}")
    return 0 if decision.ok else 1
