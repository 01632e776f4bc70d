"""wheelfarm's environment probe: prints, as one JSON line, what a flash-attn wheel must match here.

Standard library only, Python 3.6+, no wheelfarm needed: the mirror serves this file as ``<mirror>/probe.py``, so in
any image, Colab cell or cluster node

    python -c "$(curl -fsSL <mirror>/probe.py)" > env.json     # then, anywhere: wheelfarm resolve --env env.json

``wheelfarm resolve`` runs this same file to inspect an interpreter. Keys: python (X.Y), machine, glibc, torch
(``torch.__version__`` whole, local label included), cuda (``torch.version.cuda``), cxx11abi
(``torch._C._GLIBCXX_USE_CXX11_ABI``), gpu ([major, minor] of device 0, from torch, else from ``nvidia-smi``),
gpu_name, probe (this format's version), torch_error (only when torch is there but fails to import). A fact
that cannot be read is null.
"""
import json
import os
import platform
import subprocess
import sys

env = {"probe": 1, "python": "%d.%d" % sys.version_info[:2], "machine": platform.machine(), "glibc": None,
       "torch": None, "cuda": None, "cxx11abi": None, "gpu": None, "gpu_name": None}
try:
    env["glibc"] = (os.confstr("CS_GNU_LIBC_VERSION") or "").split()[-1]
except (ValueError, OSError, AttributeError, IndexError):
    pass
try:
    import torch
except ImportError as exc:  # not installed: the torch facts stay null
    torch = None
    if getattr(exc, "name", None) != "torch":  # installed but broken (a missing CUDA library, say): say so
        env["torch_error"] = "%s: %s" % (type(exc).__name__, exc)
except Exception as exc:
    torch = None
    env["torch_error"] = "%s: %s" % (type(exc).__name__, exc)
if torch is not None:
    env["torch"] = str(getattr(torch, "__version__", "")) or None
    env["cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    abi = getattr(getattr(torch, "_C", None), "_GLIBCXX_USE_CXX11_ABI", None)
    env["cxx11abi"] = None if abi is None else bool(abi)
    try:
        if torch.cuda.is_available():
            env["gpu"] = list(torch.cuda.get_device_capability(0))
            env["gpu_name"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
if env["gpu"] is None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap,name", "--format=csv,noheader"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30,
                             universal_newlines=True).stdout
        cap, _, name = out.splitlines()[0].partition(",")
        major, minor = cap.strip().split(".")
        env["gpu"], env["gpu_name"] = [int(major), int(minor)], name.strip()
    except Exception:  # no driver, no GPU, an nvidia-smi without compute_cap: the GPU stays unknown
        pass
print(json.dumps(env))
