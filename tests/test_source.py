"""wheelfarm.source: pinned sdists (PyPI via a loopback PEP 691 index, or a directory), unpacking, patches."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from farmtest import FA_VERSION, flash_attn_sdist
from wheelfarm import source
from wheelfarm.errors import BadInput

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixture" / "fixture-attn"


# ------------------------------------------------------------------------------------------------ helpers


def make_sdist(top: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Index:
    """A loopback PEP 691 index serving one sdist; counts the requests it gets."""

    def __init__(self, package: str, filename: str, data: bytes, listed_sha256: str | None = None) -> None:
        self.package, self.filename, self.data = package, filename, data
        self.listed = listed_sha256 or hashlib.sha256(data).hexdigest()
        self.requests: list[str] = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                if self.path == f"/simple/{index.package}/":
                    body = json.dumps({"meta": {"api-version": "1.0"}, "name": index.package, "files": [
                        {"filename": f"{index.filename[:-7]}-py3-none-any.whl", "url": "../../files/x.whl",
                         "hashes": {}},
                        {"filename": index.filename, "url": f"../../files/{index.filename}",
                         "hashes": {"sha256": index.listed}},
                    ]}).encode()
                    ctype = source.SIMPLE_JSON
                elif self.path == f"/files/{index.filename}":
                    body, ctype = index.data, "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def demo_index() -> Iterator[Index]:
    data = make_sdist("demo_pkg-1.0", {"setup.py": "print('hi')\n"})
    index = Index("demo-pkg", "demo_pkg-1.0.tar.gz", data)
    yield index
    index.close()


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_patch(path: Path, old: str, new: str, name: str = "file.txt", header: str = "") -> Path:
    """A one-hunk -p1 patch replacing line ``old`` by ``new`` in a 3-line file."""
    path.write_text(f"{header}--- a/{name}\n+++ b/{name}\n@@ -1,3 +1,3 @@\n first\n-{old}\n+{new}\n last\n")
    return path


# -------------------------------------------------------------------------------------------------- plan


def test_sdist_names_follow_pep_625() -> None:
    assert source.sdist_filename("flash-attn", FA_VERSION) == "flash_attn-2.8.3.post2.tar.gz"
    assert source.sdist_filename("Fixture.Attn", "0.1") == "fixture_attn-0.1.tar.gz"
    with pytest.raises(BadInput):
        source.sdist_filename("x", "not a version")


def test_source_parse() -> None:
    assert source.Source.parse("pypi").kind == "pypi"
    assert source.Source.parse("path:tests/x", root=Path("/repo")).path == Path("/repo/tests/x")
    with pytest.raises(BadInput, match="neither"):
        source.Source.parse("git:https://example.invalid")


def test_pick_sdist_prefers_the_pinned_hash() -> None:
    files = [{"filename": "demo-1.0.tar.gz", "url": "a/demo-1.0.tar.gz", "hashes": {"sha256": "aa"}},
             {"filename": "demo-1.0-py3-none-any.whl", "url": "w", "hashes": {"sha256": "bb"}},
             {"filename": "demo_1-1.0.tar.gz", "url": "c", "hashes": {}},
             {"filename": "demo-1.0.zip", "url": "z", "hashes": {"sha256": "cc"}},
             {"filename": "demo-1.0.tar.gz", "url": "https://files/demo-1.0.tar.gz",
              "hashes": {"sha256": "dd"}}]
    assert source.pick_sdist(files, "demo", "1.0", "dd", "https://idx/simple/demo/") == \
        ("demo-1.0.tar.gz", "https://files/demo-1.0.tar.gz")
    assert source.pick_sdist(files, "demo", "1.0", "ff", "https://idx/simple/demo/")[1] == \
        "https://idx/simple/demo/a/demo-1.0.tar.gz"
    with pytest.raises(BadInput, match=r"no \.tar\.gz sdist"):
        source.pick_sdist(files, "demo", "2.0", "dd", "https://idx/simple/demo/")


def test_patch_targets() -> None:
    text = ("header\n--- a/setup.py\t2020-01-01\n+++ b/setup.py\n--- /dev/null\n+++ b/csrc/new.h\n"
            "diff --git a/x b/y\nrename from old/name.py\nrename to new/name.py\n--- a/../../etc/passwd\n")
    assert source.patch_targets(text) == {"setup.py", "csrc/new.h", "old/name.py"}


# ------------------------------------------------------------------------------------------- fetch (pypi)


def test_fetch_pypi_ok_and_cached(demo_index: Index, tmp_path: Path) -> None:
    sha = hashlib.sha256(demo_index.data).hexdigest()
    got = source.fetch_sdist("demo-pkg", "1.0", sha, tmp_path, index_url=demo_index.url)
    assert got == tmp_path / "demo_pkg-1.0.tar.gz" and source.file_sha256(got) == sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_pkg-1.0.tar.gz"]  # no temporary left
    served = len(demo_index.requests)
    again = source.fetch_sdist("demo-pkg", "1.0", sha.upper(), tmp_path, index_url=demo_index.url)
    assert again == got and len(demo_index.requests) == served  # re-verified from the cache, no traffic


def test_fetch_pypi_corrupt_cache_is_fetched_again(demo_index: Index, tmp_path: Path) -> None:
    sha = hashlib.sha256(demo_index.data).hexdigest()
    (tmp_path / "demo_pkg-1.0.tar.gz").write_bytes(b"truncated")
    got = source.fetch_sdist("demo-pkg", "1.0", sha, tmp_path, index_url=demo_index.url)
    assert source.file_sha256(got) == sha and demo_index.requests


def test_fetch_pypi_hash_mismatch_names_hashes_and_key_and_deletes(demo_index: Index, tmp_path: Path) -> None:
    wrong = "0" * 64
    actual = hashlib.sha256(demo_index.data).hexdigest()
    with pytest.raises(BadInput) as err:
        source.fetch_sdist("demo-pkg", "1.0", wrong, tmp_path, index_url=demo_index.url)
    message = str(err.value)
    assert err.value.exit_code == 2
    assert wrong in message and actual in message
    assert 'packages.demo-pkg.versions."1.0".sha256' in message
    assert list(tmp_path.iterdir()) == []  # the bad download is gone, nothing partial left


def test_fetch_unknown_package_is_bad_input(demo_index: Index, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="404"):
        source.fetch_sdist("nope", "1.0", "0" * 64, tmp_path, index_url=demo_index.url)


# ------------------------------------------------------------------------------------------- fetch (path)


def test_path_sdist_is_deterministic(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "src").mkdir(parents=True)
    (pkg / "setup.py").write_text("print(1)\n")
    (pkg / "src" / "a.cu").write_text("// a\n")
    first = source.sdist_sha256_of_path(pkg, "my-pkg", "0.1.0")
    # build products, caches and metadata are left out; mtimes and file order do not matter
    for junk in ("build/temp/x.o", "dist/my_pkg-0.1.0.whl", "src/__pycache__/a.pyc",
                 "my_pkg.egg-info/PKG-INFO", "ext.cpython-311-x86_64-linux-gnu.so"):
        (pkg / junk).parent.mkdir(parents=True, exist_ok=True)
        (pkg / junk).write_text("junk")
    (pkg / "setup.py").touch()
    assert source.sdist_sha256_of_path(pkg, "my-pkg", "0.1.0") == first
    (pkg / "src" / "a.cu").write_text("// b\n")
    assert source.sdist_sha256_of_path(pkg, "my-pkg", "0.1.0") != first


def test_path_sdist_layout(tmp_path: Path) -> None:
    sha = source.sdist_sha256_of_path(FIXTURE, "fixture-attn", "0.1.0")
    got = source.fetch_sdist("fixture-attn", "0.1.0", sha, tmp_path / "cache", source=f"path:{FIXTURE}")
    assert got.name == "fixture_attn-0.1.0.tar.gz" and source.file_sha256(got) == sha
    with tarfile.open(got) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and all(n.startswith("fixture_attn-0.1.0/") for n in names)
    assert {m.mtime for m in members} == {source.SDIST_MTIME} and {m.uid for m in members} == {0}
    assert "fixture_attn-0.1.0/csrc/binding.cpp" in names and "fixture_attn-0.1.0/setup.py" in names


def test_path_source_relative_to_root(tmp_path: Path) -> None:
    sha = source.sdist_sha256_of_path(FIXTURE, "fixture-attn", "0.1.0")
    got = source.fetch_sdist("fixture-attn", "0.1.0", sha, tmp_path, source="path:tests/fixture/fixture-attn",
                             root=REPO)
    assert source.file_sha256(got) == sha


def test_path_sdist_mismatch_is_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="sdist_sha256_of_path") as err:
        source.fetch_sdist("fixture-attn", "0.1.0", "f" * 64, tmp_path, source=f"path:{FIXTURE}")
    assert err.value.exit_code == 2 and "f" * 64 in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_path_source_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        source.fetch_sdist("x", "1.0", "0" * 64, tmp_path, source=f"path:{tmp_path / 'nowhere'}")


# ------------------------------------------------------------------------------------------------ unpack


def test_unpack_returns_the_top_directory(tmp_path: Path) -> None:
    sdist = tmp_path / "demo-1.0.tar.gz"
    sdist.write_bytes(make_sdist("demo-1.0", {"setup.py": "x\n", "src/a.c": "y\n"}))
    root = source.unpack(sdist, tmp_path / "out")
    assert root == tmp_path / "out" / "demo-1.0" and (root / "src" / "a.c").read_text() == "y\n"


def test_unpack_refuses_escaping_members(tmp_path: Path) -> None:
    sdist = tmp_path / "evil.tar.gz"
    sdist.write_bytes(make_sdist("demo-1.0", {"../../escape.txt": "x"}))
    with pytest.raises(BadInput):
        source.unpack(sdist, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_unpack_garbage_is_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(BadInput, match="cannot unpack"):
        source.unpack(bad, tmp_path / "out")


# ----------------------------------------------------------------------------------------------- patches


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src" / "demo-1.0"
    root.mkdir(parents=True)
    (root / "file.txt").write_text("first\nmiddle\nlast\n")
    (root / "other.txt").write_text("untouched\n")
    return root


def test_patches_apply_in_file_name_order(tree: Path, tmp_path: Path) -> None:
    pdir = tmp_path / "patches"
    pdir.mkdir()
    # 0002 only applies on top of 0001 (it edits the line 0001 writes): order matters, and the trial run must
    # apply them in sequence rather than each against the pristine tree.
    write_patch(pdir / "0002-second.patch", "one", "two")
    write_patch(pdir / "0001-first.patch", "middle", "one", header="Subject: first\n\nwhy: a test\n\n")
    (pdir / "README.md").write_text("not a patch\n")
    applied = source.apply_patches(tree, pdir)
    assert [p.name for p in applied] == ["0001-first.patch", "0002-second.patch"]
    assert (tree / "file.txt").read_text() == "first\ntwo\nlast\n"
    assert not list(tree.parent.rglob("*.orig")) and not list(tree.parent.rglob("*.rej"))


def test_no_patch_dir_means_no_patches(tree: Path, tmp_path: Path) -> None:
    assert source.apply_patches(tree, tmp_path / "absent") == []


def test_bad_patch_names_patch_and_hunk_and_leaves_tree_untouched(tree: Path, tmp_path: Path) -> None:
    pdir = tmp_path / "patches"
    pdir.mkdir()
    write_patch(pdir / "0001-good.patch", "middle", "one")
    write_patch(pdir / "0002-bad.patch", "no such line", "two")
    before = tree_digest(tree.parent)
    with pytest.raises(BadInput) as err:
        source.apply_patches(tree, pdir)
    message = str(err.value)
    assert err.value.exit_code == 2
    assert "0002-bad.patch" in message and "Hunk #1 FAILED" in message
    assert tree_digest(tree.parent) == before  # not even the good 0001 was applied


def test_already_applied_patch_is_refused(tree: Path, tmp_path: Path) -> None:
    pdir = tmp_path / "patches"
    pdir.mkdir()
    write_patch(pdir / "0001.patch", "middle", "one")
    source.apply_patches(tree, pdir)
    with pytest.raises(BadInput, match="previously applied"):
        source.apply_patches(tree, pdir)
    assert (tree / "file.txt").read_text() == "first\none\nlast\n"


# ------------------------------------------------------------------------------------------ prepare_source


def test_prepare_source_reuses_then_rebuilds(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "file.txt").write_text("first\nmiddle\nlast\n")
    sha = source.sdist_sha256_of_path(pkg, "demo", "1.0")
    patches = tmp_path / "patches"
    (patches / "demo" / "1.0").mkdir(parents=True)
    patch = write_patch(patches / "demo" / "1.0" / "0001.patch", "middle", "one")
    work = tmp_path / "work"

    def prepare() -> Path:
        return source.prepare_source("demo", "1.0", sha, f"path:{pkg}", [patches / "demo" / "1.0"],
                                     tmp_path / "cache", work)

    root = prepare()
    assert root == work / "source" / "demo-1.0" and (root / "file.txt").read_text() == "first\none\nlast\n"
    marker = json.loads((work / "source.json").read_text())
    assert marker["sdist_sha256"] == sha and marker["patches"][0]["name"] == "0001.patch"
    (root / "build").mkdir()  # a killed build's leftovers: kept while nothing changed
    assert prepare() == root and (root / "build").is_dir()
    write_patch(patch, "middle", "two")  # a changed patch: a fresh tree
    root = prepare()
    assert (root / "file.txt").read_text() == "first\ntwo\nlast\n" and not (root / "build").exists()
    assert sorted(p.name for p in work.iterdir()) == ["source", "source.json"]


def test_prepare_source_bad_patch_keeps_the_old_tree(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "file.txt").write_text("first\nmiddle\nlast\n")
    sha = source.sdist_sha256_of_path(pkg, "demo", "1.0")
    patches = tmp_path / "patches"
    work = tmp_path / "work"
    dirs = [patches / "demo" / "1.0"]
    root = source.prepare_source("demo", "1.0", sha, f"path:{pkg}", dirs, tmp_path / "cache", work)
    (patches / "demo" / "1.0").mkdir(parents=True)
    write_patch(patches / "demo" / "1.0" / "0001.patch", "absent", "x")
    with pytest.raises(BadInput, match=r"0001\.patch"):
        source.prepare_source("demo", "1.0", sha, f"path:{pkg}", dirs, tmp_path / "cache", work)
    assert (root / "file.txt").read_text() == "first\nmiddle\nlast\n"
    assert sorted(p.name for p in work.iterdir()) == ["source", "source.json"]  # no staging folder left


def test_variant_patches_apply_after_the_version_patches(tmp_path: Path) -> None:
    """A variant's folder layers on the version's: its patch sees the version patch's result, and the marker
    covers both, so switching the variant's patch makes a fresh tree."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "file.txt").write_text("first\nmiddle\nlast\n")
    sha = source.sdist_sha256_of_path(pkg, "demo", "1.0")
    version_dir, variant_dir = tmp_path / "patches" / "demo" / "1.0", tmp_path / "patches" / "demo" / "1.0" / "lite"
    variant_dir.mkdir(parents=True)
    write_patch(version_dir / "0001.patch", "middle", "one")
    write_patch(variant_dir / "0001.patch", "one", "two")  # same file name, other folder: applies second
    work = tmp_path / "work"
    root = source.prepare_source("demo", "1.0", sha, f"path:{pkg}", [version_dir, variant_dir], tmp_path / "c", work)
    assert (root / "file.txt").read_text() == "first\ntwo\nlast\n"
    assert len(json.loads((work / "source.json").read_text())["patches"]) == 2
    plain = source.prepare_source("demo", "1.0", sha, f"path:{pkg}", [version_dir], tmp_path / "c", work)
    assert (plain / "file.txt").read_text() == "first\none\nlast\n"


def test_fixture_patch_applies_through_prepare_source(tmp_path: Path) -> None:
    sha = source.sdist_sha256_of_path(FIXTURE, "fixture-attn", "0.1.0")
    root = source.prepare_source("fixture-attn", "0.1.0", sha, "path:tests/fixture/fixture-attn",
                                 [REPO / "patches" / "fixture-attn" / "0.1.0"], tmp_path / "cache", tmp_path / "work",
                                 root=REPO)
    setup_py = (root / "setup.py").read_text()
    assert "def cxx_std_for_torch()" in setup_py and '"-std=c++17"' not in setup_py


# ---------------------------------------------------------------------------------- the real flash-attn sdist


def test_real_flash_attn_patch_applies_to_real_sdist(tmp_path: Path) -> None:
    root = source.unpack(flash_attn_sdist(tmp_path), tmp_path / "src")
    assert root.name == "flash_attn-2.8.3.post2"
    applied = source.apply_patches(root, REPO / "patches" / "flash-attn" / FA_VERSION)
    assert [p.name for p in applied] == ["0001-cxx-std-from-torch.patch"]
    setup_py = (root / "setup.py").read_text()
    assert "def cxx_std_for_torch()" in setup_py
    cuda_branch = setup_py.split("elif not SKIP_CUDA_BUILD and IS_ROCM")[0]
    assert '-std=c++17"' not in cuda_branch and '/std:c++17"' not in cuda_branch
    compile(setup_py, "setup.py", "exec")  # still valid Python
