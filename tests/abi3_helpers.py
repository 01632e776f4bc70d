"""Test helper: tiny REAL CPython extension modules, compiled with this machine's C compiler, in real wheels.

They stand in for FlashAttention-3's ``flash_attn_3/_C.abi3.so`` where only the CPython symbols matter (the
abi3 audit): the same kind of object (an ELF shared library with a ``PyInit__C``), without CUDA. Each source
makes one kind of claim true or false:

* ``LIMITED``: ``Py_LIMITED_API`` 3.9, only stable-ABI calls — a real abi3 extension;
* ``PRIVATE``: calls ``_PyBytes_Resize``, a CPython-internal symbol outside the stable ABI;
* ``TOO_NEW``: calls ``PyObject_Vectorcall``, stable ABI only from 3.12, in a wheel tagged cp39-abi3.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sysconfig
import zipfile
from pathlib import Path

_MODULE = """
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__C(void) { %s return PyModule_Create(&def); }
"""
LIMITED = "#define Py_LIMITED_API 0x03090000\n#include <Python.h>\n" + _MODULE % "PyLong_FromLong(1);"
PRIVATE = "#include <Python.h>\n" + _MODULE % (
    "PyObject *b = PyBytes_FromStringAndSize(\"ab\", 2); _PyBytes_Resize(&b, 1);")
TOO_NEW = (  # declared here too: headers older than 3.12 do not offer it to limited-API code
    "#define Py_LIMITED_API 0x030c0000\n#include <Python.h>\n"
    "PyObject *PyObject_Vectorcall(PyObject *, PyObject *const *, size_t, PyObject *);\n"
    + _MODULE % "PyObject_Vectorcall(NULL, NULL, 0, NULL);")


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def python_include() -> Path:
    return Path(sysconfig.get_paths()["include"])


def build_extension(source: str, dest: Path) -> Path:
    """Compile ``source`` into the shared object ``dest`` (undefined Py* symbols resolve at import time)."""
    cc = compiler()
    assert cc is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = dest.with_suffix(".c")
    src.write_text(source)
    subprocess.run([cc, "-shared", "-fPIC", "-O0", f"-I{python_include()}", str(src), "-o", str(dest),
                    "-Wl,--no-as-needed", "-lc"], check=True)
    src.unlink()
    return dest


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_extension_wheel(dest_dir: Path, source: str, *, module_name: str = "_C.abi3.so",
                         tag: str = "cp39-abi3-linux_x86_64", name: str = "tiny_ext", version: str = "1.0") -> Path:
    """A real wheel holding ``<name>/<module_name>`` compiled from ``source``, with METADATA, WHEEL and RECORD."""
    so = build_extension(source, dest_dir / "build" / module_name)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"from . import _C\n",
        f"{name}/{module_name}": so.read_bytes(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: >=3.9\n"
                            .encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: wheelfarm-tests\nRoot-Is-Purelib: false\nTag: {tag}\n"
                         .encode(),
    }
    record = "\n".join([*(_record_line(n, d) for n, d in files.items()), f"{info}/RECORD,,"]) + "\n"
    files[f"{info}/RECORD"] = record.encode()
    wheel = dest_dir / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    shutil.rmtree(dest_dir / "build")
    return wheel
