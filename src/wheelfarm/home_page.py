"""The mirror's home page (``index.html`` at its root): pick torch, CUDA, Python, C++ ABI and GPU, read the line.

Static, generated with the index (no server logic), and usable **without JavaScript**: every wheel is a row carrying
its facts as attributes, and the pickers filter the rows through CSS ``:has()`` rules (a row whose attribute does not
match the checked option is hidden). The only script fills in the mirror's address in the lines (without it they
read ``$MIRROR``, which the page explains) and counts what is left. The GPU rule is ``resolve``'s: the GPU code
the wheel's audit listed (recorded in the index state at publish), else the name (a variant ``sm90`` runs there only).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

from . import answers, naming
from .environment import min_arch
from .gpu_code import GpuCode
from .resolve import gpu_runs

if TYPE_CHECKING:
    from .index import Entry

MIRROR = "$MIRROR"
LAST_PYTHON_MINOR = 14  # the newest CPython 3.x an abi3 wheel is offered for on the page
GPUS = {  # the choices offered: compute capability → the cards people know it by
    (7, 5): "T4, RTX 20xx (sm75)", (8, 0): "A100, A30 (sm80)", (8, 6): "A10, A40, RTX 30xx (sm86)",
    (8, 9): "L4, L40S, RTX 40xx (sm89)", (9, 0): "H100, H200, GH200 (sm90)", (10, 0): "B200, GB200 (sm100)",
    (10, 3): "B300 (sm103)", (12, 0): "RTX 50xx, RTX PRO 6000 (sm120)", (12, 1): "GB10, DGX Spark (sm121)",
}


def probe_bytes() -> bytes:
    return resources.files("wheelfarm").joinpath("resources/probe.py").read_bytes()


def _facts(e: Entry) -> dict[str, str] | None:
    try:
        w = naming.parse_wheel_name(e.file)
    except ValueError:
        return None
    floor = min_arch(w.package) or 0
    code = GpuCode.from_list(e.gpu_code) if e.gpu_code else None
    runs = [f"sm{a}{b}" for a, b in GPUS if a * 10 + b >= floor
            and (code.runs_on((a, b)) if code else gpu_runs(w.variant, (a, b)))]
    py = w.python_tag.removeprefix("cp")
    python = f"{py[0]}.{py[1:]}"
    if w.abi3:  # a cp39-abi3 wheel (FlashAttention-3) serves every CPython from 3.9 on
        python = " ".join(f"{py[0]}.{minor}" for minor in range(int(py[1:]), LAST_PYTHON_MINOR + 1))
    return {"package": w.package, "torch": w.torch, "cuda": w.cuda_tag, "python": python,
            "abi": str(w.cxx11abi).upper(), "gpu": " ".join(runs), "platform": w.platform,
            "variant": w.variant or "standard"}


def _pythons(value: str) -> str:
    first, *more = value.split()
    return f"{first}+" if more else first


def _select(axis: str, label: str, values: Sequence[tuple[str, str]]) -> str:
    options = "".join(f'<option value="{html.escape(v)}">{html.escape(t)}</option>' for v, t in values)
    return (f'<label>{html.escape(label)} <select id="f-{axis}" name="{axis}"><option value="">any</option>'
            f"{options}</select></label>")


def _rules(axes: dict[str, Sequence[str]]) -> str:
    rules = []
    for axis, values in axes.items():
        for v in values:
            q = html.escape(v, quote=True)
            rules.append(f'body:has(#f-{axis} option[value="{q}"]:checked) tr.w:not([data-{axis}~="{q}"])'
                         " { display: none; }")
    return "\n".join(rules)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; max-width: 80rem; color: #1b1b1b; }
form { display: flex; flex-wrap: wrap; gap: 1rem; margin: 1rem 0; padding: .8rem; background: #f2f4f7; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
code { font-family: ui-monospace, monospace; font-size: .85rem; word-break: break-all; }
.note { background: #fff6d6; padding: .5rem .8rem; }
#unsupported { display: none; background: #fde2e1; padding: .5rem .8rem; }
"""

_SCRIPT = """
(function () {
  var base = location.href.replace(/[#?].*$/, "").replace(/index\\.html$/, "").replace(/\\/$/, "");
  document.querySelectorAll("code:not(.keep)").forEach(function (c) {
    c.textContent = c.textContent.split("$MIRROR").join(base);
  });
  document.getElementById("mirror").textContent = base;
  function count() {
    var shown = Array.prototype.filter.call(document.querySelectorAll("tr.w"),
      function (r) { return getComputedStyle(r).display !== "none"; }).length;
    var none = ": none on this mirror; wheelfarm resolve says why and how to build one";
    document.getElementById("count").textContent = shown + " wheel" + (shown === 1 ? "" : "s") + " fit" +
      (shown === 1 ? "s" : "") + (shown ? "" : none);
  }
  document.querySelectorAll("select").forEach(function (s) { s.addEventListener("change", count); });
  count();
})();
"""


def render(entries: Sequence[Entry]) -> bytes:
    rows: list[str] = []
    axes: dict[str, set[str]] = {"torch": set(), "cuda": set(), "python": set(), "abi": set()}
    floors: dict[str, int] = {}
    for e in sorted(entries, key=lambda e: e.file):
        facts = _facts(e)
        if facts is None:
            continue
        for axis in axes:
            axes[axis].update(facts[axis].split())
        floors[facts["package"]] = min_arch(facts["package"]) or 0
        a = answers.for_wheel(MIRROR, e.file)
        attrs = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in facts.items())
        rows.append(
            f'<tr class="w" {attrs} data-file="{html.escape(e.file)}"><td>{html.escape(facts["package"])}</td>'
            f"<td>{facts['torch']}</td><td>{facts['cuda']}</td><td>{_pythons(facts['python'])}</td>"
            f"<td>{facts['abi']}</td>"
            f"<td>{html.escape(facts['variant'])}</td><td>{html.escape(facts['platform'])}</td>"
            f"<td><code>{html.escape(a.pip)}</code><br><code>{html.escape(a.uv)}</code></td></tr>"
        )
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.replace("cu", "").split(".") if p.isdigit())

    ordered = {k: sorted(v, key=key) if k != "abi" else sorted(v) for k, v in axes.items()}
    gpu_values = [f"sm{a}{b}" for a, b in GPUS]
    low = [f"sm{a}{b}" for a, b in GPUS if floors and a * 10 + b < min(floors.values())]
    unsupported = "".join(f'body:has(#f-gpu option[value="{g}"]:checked) #unsupported {{ display: block; }}\n'
                          for g in low)
    form = "".join([
        _select("torch", "torch", [(v, v) for v in ordered["torch"]]),
        _select("cuda", "CUDA tag", [(v, v) for v in ordered["cuda"]]),
        _select("python", "Python", [(v, v) for v in ordered["python"]]),
        _select("abi", "C++11 ABI", [(v, v) for v in ordered["abi"]]),
        _select("gpu", "GPU", [(f"sm{a}{b}", t) for (a, b), t in GPUS.items()]),
    ])
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wheelfarm mirror</title>
<style>{_STYLE}
{_rules({**ordered, "gpu": gpu_values})}
{unsupported}</style>
</head>
<body>
<h1>wheelfarm mirror</h1>
<p>Prebuilt, audited, GPU-tested wheels, one per torch × CUDA × Python × C++ ABI. Pick your environment: the rows
left are the wheels that fit, each with the line to paste. Not sure what you have? In the environment itself run
<code>python -c "$(curl -fsSL $MIRROR/probe.py)"</code> and compare, or let wheelfarm decide:
<code>wheelfarm resolve --index-url $MIRROR</code>.</p>
<p class="note">Mirror address (<code class="keep">$MIRROR</code> in the lines): <span id="mirror">the address of this
page, without <code>index.html</code></span>. The lines pin the whole version, so torch stays as installed and
einops comes from your usual index. Do not point pip or uv at the global <a href="simple/">simple/</a> index for
these packages: it lists no wheel built for one torch/CUDA (see the variant indexes below).</p>
<form>{form}</form>
<p id="unsupported">This GPU is older than the packages support (flash-attn 2 needs sm80, Ampere, or newer): no
wheel can run on it. Use torch's <code>scaled_dot_product_attention</code> instead.</p>
<p>A GPU newer than your torch's CUDA fails in torch itself, whatever wheel you add: an RTX 50xx (sm120) or B200
needs a torch built with CUDA 12.8 or newer. <code>wheelfarm resolve</code> checks that for you.</p>
<p id="count"></p>
<table>
<thead><tr><th>package</th><th>torch</th><th>CUDA</th><th>Python</th><th>C++11 ABI</th><th>variant</th>
<th>platform</th><th>install</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<h2>Indexes</h2>
<p>{"<br>".join(f'<a href="{html.escape(v)}/simple/">{html.escape(v)}/simple/</a>'
               for v in sorted({e.variant for e in entries if e.variant}))}</p>
<script>{_SCRIPT}</script>
</body>
</html>
"""
    return page.encode()
