#!/usr/bin/env python3
"""Numerical checks of an installed flash-attn 2 against a PyTorch reference; writes one JSON result.

Run by the test environment's Python; it needs torch and the installed wheel only (no wheelfarm, no einops):

    python flash_attn_checks.py --out result.json [--only SUBSTRING ...] [--list]

Exit 0: every case passed; 1: a case failed; 2: the checks could not run (import error, no GPU).

The rule is upstream's own (tests/test_flash_attn.py of 2.8.3): flash-attn's error against an fp32 reference
must be at most a small multiple of the error that PyTorch makes doing the same attention in the input dtype
(ops reordered: K scaled instead of Q), plus a tiny absolute slack:

    out          <= 2 x pytorch_err + 1e-5   test_flash_attn_output (2x), the 1e-5 of test_flash_attn_causal
    dq, dk, dv   <= 3 x pytorch_err + 1e-5   test_flash_attn_output / test_flash_attn_varlen_output (3x)
    kvcache out  <= 3 x pytorch_err + 1e-5   test_flash_attn_kvcache (mult 3 without alibi)
    dropout      |dropped fraction - p| <= 0.01, out/grads as above with flash-attn's own dropout mask

Errors are max |a - b| computed in the tensors' dtype, as upstream does (the fp32 reference is cast back to
the input dtype). Causal masks are aligned to the bottom-right corner (flash-attn >= 2.1): query i sees key j
when j <= i + seqlen_k - seqlen_q; a query row that sees no key gives 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass

import torch

SCHEMA = 1
OUT_MULT = 2.0
GRAD_MULT = 3.0
KVCACHE_MULT = 3.0
ATOL = 1e-5
DROPOUT_P = 0.17
DROPOUT_FRACTION_TOL = 0.01
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    kind: str  # func | varlen | kvcache | dropout | dropout-repro
    dtype: str  # fp16 | bf16
    headdim: int
    causal: bool
    seqlen_q: int = 113
    seqlen_k: int = 203
    nheads: int = 4
    nheads_k: int = 4
    batch: int = 2
    lens_q: tuple[int, ...] = ()  # varlen: per-sequence lengths
    lens_k: tuple[int, ...] = ()
    new_kv: bool = False  # kvcache: append k/v of seqlen_q tokens to the cache
    paged: bool = False  # kvcache: paged cache with 256-token blocks and a block table

    @property
    def name(self) -> str:
        heads = "" if self.nheads == self.nheads_k else f"-h{self.nheads}kv{self.nheads_k}"
        if self.lens_q:
            shape = "lens" + "_".join(f"{a}x{b}" for a, b in zip(self.lens_q, self.lens_k, strict=True))
        else:
            shape = f"{self.seqlen_q}x{self.seqlen_k}"
        flags = ("-new" if self.new_kv else "") + ("-paged" if self.paged else "")
        causal = "causal" if self.causal else "full"
        return f"{self.kind}-{self.dtype}-d{self.headdim}-{causal}{heads}-{shape}{flags}"


def all_cases() -> list[Case]:
    """Small shapes, seqlen_q != seqlen_k, odd lengths; the whole list runs in seconds on an H100."""
    cases = [
        Case("func", dt, d, causal)
        for dt in DTYPES
        for d in (32, 64, 96, 128, 192, 256)
        for causal in (False, True)
    ]
    cases += [
        Case("func", "fp16", 59, False),  # head dim not a multiple of 8: padded by the Python wrapper
        Case("func", "fp16", 64, True, seqlen_q=256, seqlen_k=128),  # more queries than keys: empty rows
        Case("func", "bf16", 128, True, seqlen_q=1, seqlen_k=147),  # one query (decode-like)
        Case("func", "fp16", 128, True, seqlen_q=1023, seqlen_k=1024, batch=1),
    ]
    cases += [  # GQA (6 query heads over 2 kv heads) and MQA (over 1)
        Case("func", dt, 128, causal, nheads=6, nheads_k=hk)
        for dt in DTYPES
        for hk in (2, 1)
        for causal in (False, True)
    ]
    lens_q, lens_k = (37, 113, 1, 80), (90, 203, 147, 40)
    cases += [
        Case("varlen", dt, d, causal, lens_q=lens_q, lens_k=lens_k)
        for dt in DTYPES
        for d in (64, 128)
        for causal in (False, True)
    ]
    cases += [
        Case("varlen", "bf16", 128, True, nheads=6, nheads_k=2, lens_q=lens_q, lens_k=lens_k),
        Case("varlen", "fp16", 64, False, nheads=6, nheads_k=1, lens_q=lens_q, lens_k=lens_k),
    ]
    cases += [
        Case("kvcache", "fp16", 128, True, seqlen_q=1, seqlen_k=300, nheads=6, nheads_k=6, new_kv=True),
        Case(
            "kvcache",
            "bf16",
            64,
            True,
            seqlen_q=4,
            seqlen_k=512,
            nheads=6,
            nheads_k=2,
            new_kv=True,
            paged=True,
        ),
        Case("kvcache", "fp16", 256, False, seqlen_q=3, seqlen_k=339, nheads=6, nheads_k=1),
        Case("kvcache", "bf16", 128, True, seqlen_q=16, seqlen_k=1000, nheads=6, nheads_k=3, paged=True),
        Case("kvcache", "fp16", 128, True, seqlen_q=1, seqlen_k=4096, nheads=8, nheads_k=2, new_kv=True),
    ]
    cases += [
        Case("dropout", "fp16", 64, False),
        Case("dropout", "bf16", 128, True),
        Case("dropout-repro", "fp16", 64, True),
        Case("dropout-repro", "bf16", 128, False),
    ]
    return cases


# ----------------------------------------------------------------------------------------- the reference


def causal_mask(seqlen_q: int, seqlen_k: int, device: torch.device | str) -> torch.Tensor:
    """True where query i must not see key j (bottom-right aligned, as flash-attn >= 2.1)."""
    row = torch.arange(seqlen_q, device=device).unsqueeze(-1)
    col = torch.arange(seqlen_k, device=device)
    return col > row + seqlen_k - seqlen_q


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
    upcast: bool = True,
    reorder_ops: bool = False,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V like upstream's ``attention_ref``: q (b, sq, h, d), k/v (b, sk, hk, d).

    ``upcast``: compute in fp32 and cast back (the reference); else in the input dtype, and with
    ``reorder_ops`` scale K instead of Q (the "PyTorch error" yardstick).
    """
    dtype_og = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    groups = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(
        groups, dim=2
    )  # einops "b s h d -> b s (h g) d": query head i uses kv head i // g
    v = v.repeat_interleave(groups, dim=2)
    d = q.shape[-1]
    if not reorder_ops:
        scores = torch.einsum("bthd,bshd->bhts", q / math.sqrt(d), k)
    else:
        scores = torch.einsum("bthd,bshd->bhts", q, k / math.sqrt(d))
    mask = causal_mask(seqlen_q, seqlen_k, q.device) if causal else None
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    attention = torch.softmax(scores, dim=-1).to(v.dtype)
    if mask is not None:  # rows that see no key: 0 instead of NaN
        attention = attention.masked_fill(torch.all(mask, dim=-1, keepdim=True), 0.0)
    dropped = attention.masked_fill(~dropout_mask, 0.0) if dropout_mask is not None else attention
    output = torch.einsum("bhts,bshd->bthd", dropped, v * (1.0 / (1 - dropout_p)))
    return output.to(dtype=dtype_og)


def varlen_ref(q, k, v, cu_q, cu_k, *, causal, **kw) -> torch.Tensor:
    """The dense reference per sequence of a packed batch, concatenated back: (total_q, h, d)."""
    pieces = [
        attention_ref(
            q[cu_q[i] : cu_q[i + 1]].unsqueeze(0),
            k[cu_k[i] : cu_k[i + 1]].unsqueeze(0),
            v[cu_k[i] : cu_k[i + 1]].unsqueeze(0),
            causal=causal,
            **kw,
        ).squeeze(0)
        for i in range(len(cu_q) - 1)
    ]
    return torch.cat(pieces, dim=0)


# ----------------------------------------------------------------------------------------- comparisons


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def compare(tensor: str, got, ref, pt, mult: float) -> dict:
    """Upstream's rule: max|got - ref| <= mult * max|pt - ref| + ATOL."""
    err, ref_err = _max_abs(got, ref), _max_abs(pt, ref)
    tol = mult * ref_err + ATOL
    return {
        "tensor": tensor,
        "max_err": err,
        "ref_err": ref_err,
        "tol": tol,
        "passed": math.isfinite(err) and err <= tol,
    }


def exact(tensor: str, got, want) -> dict:
    """Bitwise equality (cache writes, reruns with the same seed)."""
    same = got.shape == want.shape and torch.equal(got, want)
    err = 0.0 if same else (_max_abs(got.float(), want.float()) if got.shape == want.shape else math.inf)
    return {"tensor": tensor, "max_err": err, "ref_err": None, "tol": 0.0, "passed": same}


def _grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


def fwd_bwd_checks(out, out_ref, out_pt, inputs, g) -> list[dict]:
    checks = [compare("out", out, out_ref, out_pt, OUT_MULT)]
    grads = (_grads(out, inputs, g), _grads(out_ref, inputs, g), _grads(out_pt, inputs, g))
    for name, a, r, p in zip(("dq", "dk", "dv"), *grads, strict=True):
        checks.append(compare(name, a, r, p, GRAD_MULT))
    return checks


# ----------------------------------------------------------------------------------------- the cases


def _qkv(case: Case, device, grad: bool = True):
    dtype = DTYPES[case.dtype]
    b, sq, sk, h, hk, d = case.batch, case.seqlen_q, case.seqlen_k, case.nheads, case.nheads_k, case.headdim
    q = torch.randn(b, sq, h, d, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(b, sk, hk, d, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(b, sk, hk, d, device=device, dtype=dtype, requires_grad=grad)
    return q, k, v


def run_func(fa, case: Case, device) -> list[dict]:
    q, k, v = _qkv(case, device)
    out = fa.flash_attn_func(q, k, v, 0.0, causal=case.causal)
    out_ref = attention_ref(q, k, v, causal=case.causal)
    out_pt = attention_ref(q, k, v, causal=case.causal, upcast=False, reorder_ops=True)
    return fwd_bwd_checks(out, out_ref, out_pt, (q, k, v), torch.randn_like(out))


def run_varlen(fa, case: Case, device) -> list[dict]:
    dtype = DTYPES[case.dtype]
    cu_q = [0, *itertools.accumulate(case.lens_q)]
    cu_k = [0, *itertools.accumulate(case.lens_k)]
    q = torch.randn(cu_q[-1], case.nheads, case.headdim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(cu_k[-1], case.nheads_k, case.headdim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(cu_k[-1], case.nheads_k, case.headdim, device=device, dtype=dtype, requires_grad=True)
    out = fa.flash_attn_varlen_func(
        q,
        k,
        v,
        torch.tensor(cu_q, dtype=torch.int32, device=device),
        torch.tensor(cu_k, dtype=torch.int32, device=device),
        max(case.lens_q),
        max(case.lens_k),
        0.0,
        causal=case.causal,
    )
    out_ref = varlen_ref(q, k, v, cu_q, cu_k, causal=case.causal)
    out_pt = varlen_ref(q, k, v, cu_q, cu_k, causal=case.causal, upcast=False, reorder_ops=True)
    return fwd_bwd_checks(out, out_ref, out_pt, (q, k, v), torch.randn_like(out))


PAGE = 256  # flash-attn 2 needs paged-KV block sizes divisible by 256


def run_kvcache(fa, case: Case, device) -> list[dict]:
    """flash_attn_with_kvcache: per batch element, the reference attends to its valid cache prefix."""
    dtype = DTYPES[case.dtype]
    b, sq, cap, hk, d = case.batch, case.seqlen_q, case.seqlen_k, case.nheads_k, case.headdim
    q = torch.randn(b, sq, case.nheads, d, device=device, dtype=dtype)
    new = sq if case.new_kv else 0
    k_new = torch.randn(b, new, hk, d, device=device, dtype=dtype) if case.new_kv else None
    v_new = torch.randn(b, new, hk, d, device=device, dtype=dtype) if case.new_kv else None
    block_table = None
    if case.paged:
        nblocks = math.ceil(cap / PAGE)
        k_paged = torch.randn(nblocks * b, PAGE, hk, d, device=device, dtype=dtype)
        v_paged = torch.randn(nblocks * b, PAGE, hk, d, device=device, dtype=dtype)
        block_table = torch.randperm(nblocks * b, dtype=torch.int32, device=device).reshape(b, nblocks)

        def dense(paged):
            return paged[block_table.long().flatten()].reshape(b, nblocks * PAGE, hk, d)[:, :cap]

        k_cache, v_cache = dense(k_paged), dense(v_paged)  # copies: the kernel writes into k_paged/v_paged
    else:
        k_cache = torch.randn(b, cap, hk, d, device=device, dtype=dtype)
        v_cache = torch.randn(b, cap, hk, d, device=device, dtype=dtype)
    # one short and one full cache (room left for the new tokens)
    lens = [max(1, (cap - new) // 3 + 7 * i) for i in range(b - 1)] + [cap - new]
    cache_seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    if k_new is not None and v_new is not None:
        for i, n in enumerate(lens):
            k_ref[i, n : n + new] = k_new[i]
            v_ref[i, n : n + new] = v_new[i]
    out = fa.flash_attn_with_kvcache(
        q,
        k_paged if case.paged else k_cache,
        v_paged if case.paged else v_cache,
        k=k_new,
        v=v_new,
        cache_seqlens=cache_seqlens,
        block_table=block_table,
        causal=case.causal,
    )

    def ref(**kw):
        return torch.cat(
            [
                attention_ref(
                    q[i : i + 1],
                    k_ref[i : i + 1, : n + new],
                    v_ref[i : i + 1, : n + new],
                    causal=case.causal,
                    **kw,
                )
                for i, n in enumerate(lens)
            ]
        )

    checks = [compare("out", out, ref(), ref(upcast=False, reorder_ops=True), KVCACHE_MULT)]
    if case.new_kv:
        k_after = dense(k_paged) if case.paged else k_cache
        v_after = dense(v_paged) if case.paged else v_cache
        checks += [exact("k_cache", k_after, k_ref), exact("v_cache", v_after, v_ref)]
    return checks


def run_dropout(fa, case: Case, device) -> list[dict]:
    """Dropout against the reference with flash-attn's own dropout mask (sign of the returned S)."""
    q, k, v = _qkv(case, device)
    out, _lse, s_dmask = fa.flash_attn_func(q, k, v, DROPOUT_P, causal=case.causal, return_attn_probs=True)
    sq, sk = case.seqlen_q, case.seqlen_k
    s = s_dmask[:, :, :sq, :sk]
    mask = (
        causal_mask(sq, sk, device) if case.causal else torch.zeros(sq, sk, dtype=torch.bool, device=device)
    )
    s = s.masked_fill(mask, 0.0)
    keep = s >= 0
    valid = (~mask).expand_as(keep)
    fraction = ((~keep) & valid).sum().item() / max(1, valid.sum().item())
    kw = {"causal": case.causal, "dropout_p": DROPOUT_P, "dropout_mask": keep}
    out_ref = attention_ref(q, k, v, **kw)
    out_pt = attention_ref(q, k, v, upcast=False, reorder_ops=True, **kw)
    frac_err = abs(fraction - DROPOUT_P)
    checks = [
        {
            "tensor": "dropout_fraction",
            "max_err": frac_err,
            "ref_err": None,
            "tol": DROPOUT_FRACTION_TOL,
            "passed": frac_err <= DROPOUT_FRACTION_TOL,
            "value": fraction,
        }
    ]
    return checks + fwd_bwd_checks(out, out_ref, out_pt, (q, k, v), torch.randn_like(out))


def run_dropout_repro(fa, case: Case, device) -> list[dict]:
    """Same seed twice -> identical output and (deterministic=True) gradients; p > 0 differs from p = 0."""
    q, k, v = _qkv(case, device)
    g = torch.randn(case.batch, case.seqlen_q, case.nheads, case.headdim, device=device, dtype=q.dtype)

    def once(p: float):
        torch.manual_seed(1234)
        out = fa.flash_attn_func(q, k, v, p, causal=case.causal, deterministic=True)
        return (out, *torch.autograd.grad(out, (q, k, v), g))

    first, second, no_dropout = once(DROPOUT_P), once(DROPOUT_P), once(0.0)
    checks = [
        exact(f"{n}_same_seed", a, b)
        for n, a, b in zip(("out", "dq", "dk", "dv"), first, second, strict=True)
    ]
    differs = _max_abs(first[0].float(), no_dropout[0].float())
    checks.append(
        {
            "tensor": "out_vs_p0",
            "max_err": differs,
            "ref_err": None,
            "tol": None,
            "passed": math.isfinite(differs) and differs > 0.0,
        }
    )
    return checks


RUNNERS = {
    "func": run_func,
    "varlen": run_varlen,
    "kvcache": run_kvcache,
    "dropout": run_dropout,
    "dropout-repro": run_dropout_repro,
}


# ----------------------------------------------------------------------------------------- driver


def _ratio(check: dict) -> float:
    if check["tol"] is None:  # a "must differ" check
        return 0.0 if check["passed"] else math.inf
    err = check["max_err"]
    if err is None or not math.isfinite(err):
        return math.inf
    return err / check["tol"] if check["tol"] > 0 else (0.0 if err == 0 else math.inf)


def _finite(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None  # JSON has no NaN/inf


def run_case(fa, case: Case, device) -> dict:
    record = {"name": case.name, **{k: v for k, v in asdict(case).items() if k not in ("lens_q", "lens_k")}}
    if case.lens_q:
        record["lens_q"], record["lens_k"] = list(case.lens_q), list(case.lens_k)
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        checks = RUNNERS[case.kind](fa, case, device)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        error = None
    except Exception as exc:  # one broken case must not hide the others
        checks, error = [], f"{type(exc).__name__}: {exc}".strip()[:2000]
        traceback.print_exc(file=sys.stderr)
    seconds = time.perf_counter() - start
    worst = max(checks, key=_ratio, default=None)
    record.update(
        max_err=_finite(worst["max_err"]) if worst else None,
        ref_err=_finite(worst["ref_err"]) if worst else None,
        tol=_finite(worst["tol"]) if worst else None,
        worst=worst["tensor"] if worst else None,
        passed=error is None and bool(checks) and all(c["passed"] for c in checks),
        seconds=round(seconds, 4),
        checks=[{k: _finite(v) for k, v in c.items()} for c in checks],
        error=error,
    )
    return record


def environment(fa, device) -> dict:
    env = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cxx11abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", False)),
        "package_version": getattr(fa, "__version__", None),  # the keys wheelfarm reads
        "package_file": os.path.realpath(getattr(fa, "__file__", "") or ""),
        "device": str(device),
    }
    if str(device).startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}"}
    return env


def _line(record: dict) -> str:
    verdict = "PASS" if record["passed"] else "FAIL"
    if record["error"]:
        detail = record["error"].splitlines()[0]
    elif record["worst"] is None:
        detail = "no checks"
    else:
        err, tol = record["max_err"], record["tol"]
        detail = f"worst {record['worst']}: err {err:.3g}" if err is not None else f"worst {record['worst']}"
        detail += (
            f" <= tol {tol:.3g}"
            if (tol is not None and record["passed"])
            else (f" > tol {tol:.3g}" if tol is not None else "")
        )
    return f"{verdict} {record['name']:<48} {detail} ({record['seconds']:.2f}s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON result here (default: stdout only)")
    parser.add_argument("--only", action="append", default=[], help="run cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # tests use a CPU stand-in
    args = parser.parse_args(argv)
    cases = [c for c in all_cases() if not args.only or any(s in c.name for s in args.only)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    start = time.perf_counter()
    result: dict = {"schema": SCHEMA, "passed": False, "error": None, "env": {}, "cases": [], "seconds": 0.0}
    code = 2
    try:
        import flash_attn as fa

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False in the test environment")
        result["env"] = environment(fa, args.device)
        print(
            f"flash_attn {result['env']['package_version']} from {result['env']['package_file']}; torch "
            f"{torch.__version__} (CUDA {torch.version.cuda}); {len(cases)} cases",
            flush=True,
        )
        for case in cases:
            record = run_case(fa, case, args.device)
            result["cases"].append(record)
            print(_line(record), flush=True)
        failed = [c["name"] for c in result["cases"] if not c["passed"]]
        result["passed"] = bool(cases) and not failed
        code = 0 if result["passed"] else 1
        print(f"{len(cases) - len(failed)}/{len(cases)} cases passed", flush=True)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    write_result(result, start, args.out)
    return code


def write_result(result: dict, start: float, out: str | None) -> None:
    """The run's seconds into ``result``, and the JSON to ``out`` (or standard output). FA3's checks use it too."""
    result["seconds"] = round(time.perf_counter() - start, 3)
    text = json.dumps(result, indent=1, allow_nan=False)
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    sys.exit(main())
