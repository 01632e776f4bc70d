"""The abi3 audit of a limited-API wheel (``…-cp39-abi3-…``): one file that claims to serve every CPython from 3.9 on.

Two ways such a claim breaks, both invisible on the Python that built it:

* an extension uses a CPython symbol outside the stable ABI (``_PyBytes_Resize``, anything not in the limited
  API), or one newer than the tag (``PyObject_Vectorcall`` is abi3 only from 3.12): on another Python the import
  fails with "undefined symbol" or the call does the wrong thing. **abi3audit** (pinned, PyPA's tool; its symbol
  list is CPython's own Misc/stable_abi.toml) checks every shared object of the wheel for that.
* an extension module is named for one interpreter (``_C.cpython-312-x86_64-linux-gnu.so``): other Pythons do
  not even look for it. abi3audit scans such files too but does not judge their names; this module does.

Libraries that are not Python modules (a vendored ``libfoo.so.1`` under ``<pkg>.libs/``) are scanned by abi3audit
(they must not use per-Python symbols either) but need no ``.abi3`` name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import BuildFailed

ABI3AUDIT_TIMEOUT_S = 600
# CPython's per-interpreter extension suffix (PEP 3149): _C.cpython-312-x86_64-linux-gnu.so, _C.cpython-313t-….so
_PER_PYTHON = re.compile(r"\.(cpython-\d+[a-z]*|pypy\d+-pp\d+)-[^.]+\.so$")


@dataclass(frozen=True)
class Abi3Findings:
    """What the audit found; ``problems`` empty means the abi3 claim holds."""

    scanned: tuple[str, ...]  # shared objects abi3audit audited
    non_abi3: dict[str, tuple[str, ...]]  # object -> CPython symbols outside the stable ABI
    too_new: dict[str, dict[str, str]]  # object -> {symbol: the Python that added it to the stable ABI}
    per_python_names: tuple[str, ...]  # extension modules named for one interpreter
    baseline: str  # the tag's Python, "3.9"
    tool: str  # "abi3audit 0.0.26"

    @property
    def problems(self) -> list[str]:
        out = [f"{so} uses {', '.join(sorted(syms)[:5])}{' …' if len(syms) > 5 else ''}, not in the stable ABI"
               for so, syms in self.non_abi3.items() if syms]
        out += [f"{so} uses {', '.join(f'{s} (abi3 from {v})' for s, v in sorted(syms.items())[:5])}, newer than "
                f"the tag's Python {self.baseline}" for so, syms in self.too_new.items() if syms]
        out += [f"{name} is named for one Python, so no other Python imports it" for name in self.per_python_names]
        if not self.scanned:
            out.append("no shared object was audited: an abi3 wheel without an extension claims nothing")
        return out


def per_python_modules(members: Sequence[str]) -> tuple[str, ...]:
    """Members of a wheel that are extension modules with an interpreter-specific suffix."""
    return tuple(m for m in members if _PER_PYTHON.search(PurePosixPath(m).name))


def run_abi3audit(wheel: Path, python: str = sys.executable) -> dict[str, Any]:
    """abi3audit's JSON report of ``wheel`` (``--report``; exit 1 only means it found violations)."""
    with tempfile.TemporaryDirectory(prefix="wheelfarm-abi3-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "abi3audit", "--report", "--output", str(report), "--strict", str(wheel)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=ABI3AUDIT_TIMEOUT_S, check=False,
                                  env={**os.environ, "ABI3AUDIT_LOGLEVEL": "warning"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildFailed(f"abi3audit could not run on {wheel.name}: {exc}") from exc
        if done.returncode not in (0, 1) or not report.is_file() or not report.read_text().strip():
            raise BuildFailed(f"abi3audit failed on {wheel.name} (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-500:]}",
                              hint="pip install abi3audit==0.0.26 (wheelfarm's pin) into wheelfarm's environment")
        data: dict[str, Any] = json.loads(report.read_text())
        return data


def tool_version(python: str = sys.executable) -> str:
    done = subprocess.run([python, "-m", "abi3audit", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip() or "abi3audit (version unknown)"


def findings(report: dict[str, Any], members: Sequence[str], baseline: str, tool: str) -> Abi3Findings:
    """Fold abi3audit's report (one wheel spec) and the wheel's member names into findings."""
    scanned: list[str] = []
    non_abi3: dict[str, tuple[str, ...]] = {}
    too_new: dict[str, dict[str, str]] = {}
    for spec in report.get("specs", {}).values():
        for entry in spec.get("wheel", []) if spec.get("kind") == "wheel" else []:
            name, result = entry["name"], entry["result"]
            scanned.append(name)
            non_abi3[name] = tuple(result.get("non_abi3_symbols", []))
            too_new[name] = dict(result.get("future_abi3_objects", {}))
    return Abi3Findings(tuple(scanned), non_abi3, too_new, per_python_modules(members), baseline, tool)
