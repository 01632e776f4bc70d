#!/usr/bin/env python3
"""Numerical checks of an installed FlashAttention-3 (``flash_attn_interface``) against a PyTorch reference.

Run by the test environment's Python; it needs torch and the installed wheel only:

    python flash_attn_3_checks.py --out result.json [--only SUBSTRING ...] [--list]

Exit 0: every case passed; 1: a case failed; 2: the checks could not run (import error, no GPU).

The cases follow what the wheel was compiled with: the FLASH_ATTENTION_DISABLE_* variables of its variant
(``wheelfarm gpu-test`` sets them from the wheel's local label, as for upstream's hopper/test_flash_attn.py)
drop dtypes, head dims, backward, varlen and the kvcache append. The rule is upstream's own for FA3
(hopper/test_flash_attn.py of 2.8.3): against an fp32 reference, FA3's error must be at most twice the error
PyTorch makes doing the same attention in the input dtype, plus twice the reference's own rounding error:

    err(t) <= 2 x max|t_pt - t_ref| + 2 x max|(t_ref + 0.3 - 0.3) - t_ref|     for out, dq, dk, dv

The reference, the causal alignment (bottom-right) and the GQA head mapping are those of flash_attn_checks.py
(imported from beside this file), which checks FlashAttention-2 the same way.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass

import torch
from flash_attn_checks import _finite, _line, _max_abs, _ratio, attention_ref, varlen_ref, write_result

SCHEMA = 1
MULT = 2.0
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
HDIMS = (64, 96, 128, 192, 256)


def disabled(feature: str) -> bool:
    """The build's switch, as hopper/setup.py and hopper/test_flash_attn.py read it."""
    return os.getenv(f"FLASH_ATTENTION_DISABLE_{feature.upper()}", "FALSE") == "TRUE"


@dataclass(frozen=True)
class Case:
    kind: str  # func | varlen | kvcache
    dtype: str
    headdim: int
    causal: bool
    seqlen_q: int = 113
    seqlen_k: int = 203
    nheads: int = 6
    nheads_k: int = 6
    batch: int = 2
    lens_q: tuple[int, ...] = ()
    lens_k: tuple[int, ...] = ()
    new_kv: bool = False  # kvcache: append seqlen_q new tokens (needs appendkv)

    @property
    def name(self) -> str:
        heads = "" if self.nheads == self.nheads_k else f"-h{self.nheads}kv{self.nheads_k}"
        if self.lens_q:
            shape = "lens" + "_".join(f"{a}x{b}" for a, b in zip(self.lens_q, self.lens_k, strict=True))
        else:
            shape = f"{self.seqlen_q}x{self.seqlen_k}"
        causal = "causal" if self.causal else "full"
        return f"{self.kind}-{self.dtype}-d{self.headdim}-{causal}{heads}-{shape}" + ("-new" if self.new_kv else "")


def all_cases() -> list[Case]:
    """The compiled dtypes and head dims; odd lengths, seqlen_q != seqlen_k, GQA/MQA; seconds on an H100/H200."""
    dtypes = [d for d in DTYPES if not disabled(d)]
    hdims = [d for d in HDIMS if not disabled(f"hdim{d}")]
    cases = [Case("func", dt, d, causal) for dt in dtypes for d in hdims for causal in (False, True)]
    for dt, d in itertools.product(dtypes, hdims[-1:]):
        cases += [Case("func", dt, d, True, nheads=6, nheads_k=hk) for hk in (2, 1)]  # GQA and MQA
        cases += [
            Case("func", dt, d, True, seqlen_q=256, seqlen_k=128),  # more queries than keys: empty rows
            Case("func", dt, d, True, seqlen_q=1, seqlen_k=147),  # one query (decode-like)
            Case("func", dt, d, False, seqlen_q=1023, seqlen_k=1024, batch=1),
        ]
    if not disabled("varlen"):
        lens_q, lens_k = (37, 113, 1, 80), (90, 203, 147, 40)
        cases += [Case("varlen", dt, d, causal, lens_q=lens_q, lens_k=lens_k)
                  for dt in dtypes for d in hdims for causal in (False, True)]
        cases += [Case("varlen", dt, hdims[-1], True, nheads_k=2, lens_q=lens_q, lens_k=lens_k) for dt in dtypes]
    for dt in dtypes:
        cases.append(Case("kvcache", dt, hdims[-1], True, seqlen_q=1, seqlen_k=300, nheads_k=2))
        cases.append(Case("kvcache", dt, hdims[-1], False, seqlen_q=16, seqlen_k=1000, nheads_k=1))
        if not disabled("appendkv"):
            cases.append(Case("kvcache", dt, hdims[-1], True, seqlen_q=4, seqlen_k=512, nheads_k=2, new_kv=True))
    return cases


def compare(tensor: str, got: torch.Tensor, ref: torch.Tensor, pt: torch.Tensor) -> dict:
    """hopper/test_flash_attn.py's rule: max|got - ref| <= 2 * max|pt - ref| + 2 * ref's rounding error."""
    err, ref_err = _max_abs(got, ref), _max_abs(pt, ref)
    atol = 2 * _max_abs(ref + 0.3 - 0.3, ref)
    tol = MULT * ref_err + atol
    return {"tensor": tensor, "max_err": err, "ref_err": ref_err, "tol": tol,
            "passed": math.isfinite(err) and err <= tol}


def fwd_bwd(out, out_ref, out_pt, inputs) -> list[dict]:
    checks = [compare("out", out, out_ref, out_pt)]
    if disabled("backward"):
        return checks
    g = torch.randn_like(out)
    grads = [torch.autograd.grad(o, inputs, g) for o in (out, out_ref, out_pt)]
    checks += [compare(n, a, r, p) for n, a, r, p in zip(("dq", "dk", "dv"), *grads, strict=True)]
    return checks


def run_func(fa, case: Case, device) -> list[dict]:
    dtype, grad = DTYPES[case.dtype], not disabled("backward")
    b, sq, sk, h, hk, d = case.batch, case.seqlen_q, case.seqlen_k, case.nheads, case.nheads_k, case.headdim
    q = torch.randn(b, sq, h, d, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(b, sk, hk, d, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(b, sk, hk, d, device=device, dtype=dtype, requires_grad=grad)
    out = fa.flash_attn_func(q, k, v, causal=case.causal)
    out_ref = attention_ref(q, k, v, causal=case.causal)
    out_pt = attention_ref(q, k, v, causal=case.causal, upcast=False, reorder_ops=True)
    return fwd_bwd(out, out_ref, out_pt, (q, k, v))


def run_varlen(fa, case: Case, device) -> list[dict]:
    dtype, grad = DTYPES[case.dtype], not disabled("backward")
    cu_q = [0, *itertools.accumulate(case.lens_q)]
    cu_k = [0, *itertools.accumulate(case.lens_k)]
    q = torch.randn(cu_q[-1], case.nheads, case.headdim, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(cu_k[-1], case.nheads_k, case.headdim, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(cu_k[-1], case.nheads_k, case.headdim, device=device, dtype=dtype, requires_grad=grad)
    out = fa.flash_attn_varlen_func(
        q, k, v,
        torch.tensor(cu_q, dtype=torch.int32, device=device), torch.tensor(cu_k, dtype=torch.int32, device=device),
        max(case.lens_q), max(case.lens_k), causal=case.causal,
    )
    out_ref = varlen_ref(q, k, v, cu_q, cu_k, causal=case.causal)
    out_pt = varlen_ref(q, k, v, cu_q, cu_k, causal=case.causal, upcast=False, reorder_ops=True)
    return fwd_bwd(out, out_ref, out_pt, (q, k, v))


def run_kvcache(fa, case: Case, device) -> list[dict]:
    """flash_attn_with_kvcache on a dense cache: each batch element attends to its valid prefix (+ new tokens)."""
    dtype = DTYPES[case.dtype]
    b, sq, cap, hk, d = case.batch, case.seqlen_q, case.seqlen_k, case.nheads_k, case.headdim
    q = torch.randn(b, sq, case.nheads, d, device=device, dtype=dtype)
    k_cache = torch.randn(b, cap, hk, d, device=device, dtype=dtype)
    v_cache = torch.randn(b, cap, hk, d, device=device, dtype=dtype)
    new = sq if case.new_kv else 0
    k_new = torch.randn(b, new, hk, d, device=device, dtype=dtype) if new else None
    v_new = torch.randn(b, new, hk, d, device=device, dtype=dtype) if new else None
    lens = [max(1, (cap - new) // 3 + 7 * i) for i in range(b - 1)] + [cap - new]
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    if k_new is not None and v_new is not None:
        for i, n in enumerate(lens):
            k_ref[i, n : n + new], v_ref[i, n : n + new] = k_new[i], v_new[i]
    out = fa.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=v_new,
                                     cache_seqlens=torch.tensor(lens, dtype=torch.int32, device=device),
                                     causal=case.causal)

    def ref(**kw):
        return torch.cat([attention_ref(q[i : i + 1], k_ref[i : i + 1, : n + new], v_ref[i : i + 1, : n + new],
                                        causal=case.causal, **kw) for i, n in enumerate(lens)])

    checks = [compare("out", out, ref(), ref(upcast=False, reorder_ops=True))]
    if new:
        for name, got, want in (("k_cache", k_cache, k_ref), ("v_cache", v_cache, v_ref)):
            same = torch.equal(got, want)
            checks.append({"tensor": name, "max_err": 0.0 if same else _max_abs(got.float(), want.float()),
                           "ref_err": None, "tol": 0.0, "passed": same})
    return checks


RUNNERS = {"func": run_func, "varlen": run_varlen, "kvcache": run_kvcache}


def run_case(fa, case: Case, device) -> dict:
    record: dict = {"name": case.name, "kind": case.kind, "dtype": case.dtype, "headdim": case.headdim,
                    "causal": case.causal, "nheads": case.nheads, "nheads_k": case.nheads_k}
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        checks = RUNNERS[case.kind](fa, case, device)
        torch.cuda.synchronize()
        error = None
    except Exception as exc:  # one broken case must not hide the others
        checks, error = [], f"{type(exc).__name__}: {exc}".strip()[:2000]
        traceback.print_exc(file=sys.stderr)
    worst = max(checks, key=_ratio, default=None)
    record.update(
        max_err=_finite(worst["max_err"]) if worst else None,
        ref_err=_finite(worst["ref_err"]) if worst else None,
        tol=_finite(worst["tol"]) if worst else None,
        worst=worst["tensor"] if worst else None,
        passed=error is None and bool(checks) and all(c["passed"] for c in checks),
        seconds=round(time.perf_counter() - start, 4),
        checks=[{k: _finite(v) for k, v in c.items()} for c in checks],
        error=error,
    )
    return record


def registered_ops() -> dict:
    """The abi3 extension registers its kernels with torch (TORCH_LIBRARY) on import; no op, no FA3."""
    names = [n for n in ("fwd", "bwd", "fwd_combine", "get_scheduler_metadata")
             if hasattr(torch.ops.flash_attn_3, n)]
    return {"name": "torch.ops.flash_attn_3", "kind": "ops", "dtype": "-", "headdim": 0, "causal": False,
            "passed": "fwd" in names and ("bwd" in names or disabled("backward")), "ops": names,
            "max_err": None, "ref_err": None, "tol": None, "worst": None, "seconds": 0.0, "checks": [],
            "error": None if "fwd" in names else "torch.ops.flash_attn_3.fwd is not registered"}


def environment(fa, device) -> dict:
    import flash_attn_3._C as ext

    props = torch.cuda.get_device_properties(0)
    return {
        "python": platform.python_version(), "executable": sys.executable, "prefix": sys.prefix,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cxx11abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", False)),
        "package_version": importlib.metadata.version("flash_attn_3"),  # the keys wheelfarm reads
        "package_file": os.path.realpath(fa.__file__),
        "extension": os.path.realpath(ext.__file__),
        "disabled": sorted(k for k, v in os.environ.items()
                           if k.startswith("FLASH_ATTENTION_DISABLE_") and v == "TRUE"),
        "device": str(device),
        "gpu": {"name": props.name, "capability": f"{props.major}.{props.minor}"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON result here (default: stdout only)")
    parser.add_argument("--only", action="append", default=[], help="run cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    args = parser.parse_args(argv)
    cases = [c for c in all_cases() if not args.only or any(s in c.name for s in args.only)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    start = time.perf_counter()
    result: dict = {"schema": SCHEMA, "passed": False, "error": None, "env": {}, "cases": [], "seconds": 0.0}
    code = 2
    try:
        import flash_attn_interface as fa

        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False in the test environment")
        result["env"] = environment(fa, "cuda")
        print(f"flash_attn_3 {result['env']['package_version']} from {result['env']['extension']}; torch "
              f"{torch.__version__} (CUDA {torch.version.cuda}); {len(cases)} cases; compiled out: "
              f"{', '.join(result['env']['disabled']) or 'nothing'}", flush=True)
        result["cases"].append(registered_ops())
        print(_line(result["cases"][-1]), flush=True)
        for case in cases:
            record = run_case(fa, case, "cuda")
            result["cases"].append(record)
            print(_line(record), flush=True)
        failed = [c["name"] for c in result["cases"] if not c["passed"]]
        result["passed"] = bool(cases) and not failed
        code = 0 if result["passed"] else 1
        print(f"{len(result['cases']) - len(failed)}/{len(result['cases'])} cases passed", flush=True)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    write_result(result, start, args.out)
    return code


if __name__ == "__main__":
    sys.exit(main())
