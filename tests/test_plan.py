"""``wheelfarm plan``: pure planning (cells × present wheel names → build jobs, chunked for GitHub Actions), what a
mirror counts as present (wheel + passing audit [+ GPU result]), and the CLI against a real local mirror, read
through the store layer and served over HTTP.

The mirrors hold stand-in wheels from tests/wheelgen.py, named exactly like the fixture package's matrix cells:
planning looks at names and result files only, never inside a wheel.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wheelfarm.cli import main
from wheelfarm.config import load
from wheelfarm.errors import BadInput
from wheelfarm.matrix import Cell, expand, select
from wheelfarm.plan import MATRIX_LIMIT, Holding, StoreReader, holding, plan, wheel_path
from wheelfarm.publish import Options, publish
from wheelfarm.store.local import LocalStore
from wheelgen import make_wheel, write_result

ROOT = Path(__file__).resolve().parents[1]
MATRIX = str(ROOT / "build_matrix.toml")
FIXTURE = ["package=fixture-attn"]
RUNNERS = {name: p.runner for name, p in load(MATRIX).platforms.items()}  # [platforms] of the shipped matrix


def cell(python: str = "3.12", torch: str = "2.8", abi: bool = True, variant: str = "",
         archs: tuple[str, ...] = ("80", "90"), platform: str = "linux_x86_64") -> Cell:
    return Cell("flash-attn", "2.8.3.post2", torch, "12.9", python, abi, archs, variant, platform)


@pytest.fixture(scope="module")
def matrix_cells() -> list[Cell]:
    return expand(load(MATRIX))


# ------------------------------------------------------------------------------------------- pure planning


def test_one_job_per_group_with_all_its_pythons() -> None:
    cells = [cell(py, torch) for torch in ("2.7", "2.8") for py in ("3.12", "3.10", "3.9", "3.11")]
    result = plan(cells, present=set())
    assert len(result.jobs) == 2
    for job in result.jobs:
        assert job.pythons == ("3.9", "3.10", "3.11", "3.12")  # numeric order, not string order
        assert {c.group for c in job.cells} == {job.group}
    assert result.matrices() == [{"include": [j.to_json() for j in result.jobs]}]
    entry = result.jobs[0].to_json()
    assert set(entry) == {"group", "platform", "runner", "select", "pythons", "cells"}
    assert entry["runner"] == "ubuntu-24.04"
    assert entry["cells"] == 4 and entry["pythons"] == ["3.9", "3.10", "3.11", "3.12"]


def test_only_the_missing_pythons_are_planned() -> None:
    cells = [cell(py) for py in ("3.10", "3.11", "3.12")]
    result = plan(cells, present={cells[0].wheel, cells[2].wheel})
    (job,) = result.jobs
    assert job.pythons == ("3.11",)
    assert job.select == (f"group={cells[0].group}", "platform=linux_x86_64", "python=3.11")
    assert select(cells, job.select) == [cells[1]]


def test_groups_split_by_abi_archs_variant_and_platform() -> None:
    cells = [cell(abi=False), cell(abi=True), cell(archs=("90",)), cell(variant="sm90", archs=("90",)),
             cell(platform="linux_aarch64")]
    result = plan(cells, present=set(), runners=RUNNERS)
    assert len(result.jobs) == 5
    assert {(j.group, j.platform) for j in result.jobs} == {(c.group, c.platform) for c in cells}
    assert {j.platform: j.runner for j in result.jobs} == {"linux_x86_64": "ubuntu-24.04",
                                                          "linux_aarch64": "ubuntu-24.04-arm"}
    with pytest.raises(BadInput, match="no CI runner for platform linux_aarch64"):
        plan(cells, present=set(), runners={"linux_x86_64": "ubuntu-24.04"})


def test_nothing_missing_plans_nothing() -> None:
    cells = [cell(py) for py in ("3.10", "3.11")]
    result = plan(cells, present={c.wheel for c in cells})
    assert (result.missing, result.jobs, result.matrices()) == ((), (), [])
    assert result.to_json("m")["missing"] == 0 and result.to_json("m")["present"] == 2


def test_force_plans_everything() -> None:
    cells = [cell(py) for py in ("3.10", "3.11")]
    result = plan(cells, present={c.wheel for c in cells}, force=True)
    assert len(result.missing) == 2 and result.forced


def test_select_picks_exactly_each_jobs_cells_from_the_whole_matrix(matrix_cells: list[Cell]) -> None:
    present = {c.wheel for i, c in enumerate(matrix_cells) if i % 3 == 0}  # every third cell is published
    result = plan(matrix_cells, present, runners=RUNNERS)
    assert {c.wheel for c in result.missing} == {c.wheel for c in matrix_cells} - present
    picked = []
    for job in result.jobs:
        chosen = select(matrix_cells, job.select)
        assert sorted(chosen) == sorted(job.cells), job.group
        picked += chosen
    assert sorted(picked) == sorted(result.missing)


def test_select_values_are_literal_globs() -> None:
    weird = Cell("flash-attn", "2.8.3.post2", "2.8", "12.9", "3.12", True, ("90",), "", "linux_x86_64")
    job = plan([weird], set()).jobs[0]
    assert all("*" not in s and "?" not in s for s in job.select)
    from wheelfarm.plan import _exact

    assert _exact("a*b?[c]") == "a[*]b[?][[]c]"
    assert select([weird], [f"group={_exact(weird.group)}"]) == [weird]


@pytest.mark.parametrize(("groups", "chunk", "sizes"), [
    (600, MATRIX_LIMIT, [256, 256, 88]),
    (256, MATRIX_LIMIT, [256]),
    (257, MATRIX_LIMIT, [256, 1]),
    (10, 4, [4, 4, 2]),
])
def test_jobs_are_chunked_for_github_actions(groups: int, chunk: int, sizes: list[int]) -> None:
    cells = [cell(py, variant=f"v{i}") for i in range(groups) for py in ("3.11", "3.12")]
    result = plan(cells, set(), chunk_size=chunk)
    assert [len(m["include"]) for m in result.matrices()] == sizes
    assert all(e["cells"] == 2 for m in result.matrices() for e in m["include"])
    seen = [e["group"] for m in result.matrices() for e in m["include"]]
    assert len(seen) == len(set(seen)) == groups  # each job in exactly one chunk


@pytest.mark.parametrize("bad", [0, 257, -1])
def test_chunk_size_beyond_the_github_limit_is_bad_input(bad: int) -> None:
    with pytest.raises(BadInput, match="between 1 and 256"):
        plan([cell()], set(), chunk_size=bad)


# -------------------------------------------------------------------------------- what counts as present


class FakeReader:
    description = "fake"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.reads: list[str] = []

    def wheel_names(self, project: str) -> set[str]:
        return {n for n in self.files if n.startswith(f"wheels/{project}/") and n.endswith(".whl")}

    def read(self, name: str) -> bytes | None:
        self.reads.append(name)
        return self.files.get(name)


def _result(passed: object) -> bytes:
    return json.dumps({"schema": 1, "passed": passed}).encode()


def test_present_needs_the_wheel_and_a_passing_audit() -> None:
    ok, failed, no_audit, absent, bad_json = (cell(py) for py in ("3.9", "3.10", "3.11", "3.12", "3.13"))
    files = {
        wheel_path(ok): b"", wheel_path(ok) + ".audit.json": _result(True),
        wheel_path(failed): b"", wheel_path(failed) + ".audit.json": _result(False),
        wheel_path(no_audit): b"",
        wheel_path(bad_json): b"", wheel_path(bad_json) + ".audit.json": b"{not json",
        wheel_path(absent) + ".audit.json": _result(True),  # a result without its wheel: not present
    }
    reader = FakeReader(files)
    held = holding([ok, failed, no_audit, absent, bad_json], reader)
    assert held.present == {ok.wheel}
    assert set(held.incomplete) == {failed.wheel, no_audit.wheel, bad_json.wheel}
    assert "did not pass" in held.incomplete[failed.wheel]
    assert "missing" in held.incomplete[no_audit.wheel]
    assert not any(r.endswith(".whl") for r in reader.reads)  # never a wheel: names and result files only


def test_gpu_result_required_only_when_asked() -> None:
    a, b, c = cell("3.10"), cell("3.11"), cell("3.12")
    files = {wheel_path(x): b"" for x in (a, b, c)}
    files |= {wheel_path(x) + ".audit.json": _result(True) for x in (a, b, c)}
    files[wheel_path(a) + ".gpu.json"] = _result(True)
    files[wheel_path(b) + ".gpu.json"] = _result("yes")  # only a JSON true counts
    assert holding([a, b, c], FakeReader(files)).present == {a.wheel, b.wheel, c.wheel}
    gpu = holding([a, b, c], FakeReader(files), require_gpu=True)
    assert gpu.present == {a.wheel}
    assert set(gpu.incomplete) == {b.wheel, c.wheel}
    arch = a.platform.removeprefix("linux_")  # x86_64
    exempt = holding([a, b, c], FakeReader(files), require_gpu=True, gpu_untested=[arch])  # publish's rule
    assert exempt.present == {a.wheel, b.wheel, c.wheel}


def test_incomplete_wheels_are_planned_and_reported() -> None:
    a, b = cell("3.10"), cell("3.11")
    held = Holding(frozenset({a.wheel}), {b.wheel: "no audit result"})
    result = plan([a, b], held.present, incomplete=held.incomplete)
    assert [c.wheel for c in result.missing] == [b.wheel]
    assert result.incomplete == (b.wheel,)


# ------------------------------------------------------------------------------ the CLI, on a real mirror


def fixture_cells() -> list[Cell]:
    return select(expand(load(MATRIX)), FIXTURE)


def stand_in(cell_: Cell, dest: Path, *, audit: bool | None = True, gpu: bool | None = None) -> Path:
    """A wheel named like the cell (pure-Python stand-in payload) with the given side files."""
    version = cell_.wheel.split("-")[1]
    wheel = make_wheel(dest, cell_.package, version, python_tag=cell_.python_tag, platform=cell_.platform)
    assert wheel.name == cell_.wheel
    if audit is not None:
        write_result(wheel, ".audit.json", audit)
    if gpu is not None:
        write_result(wheel, ".gpu.json", gpu)
    return wheel


def run_plan(capsys: pytest.CaptureFixture[str], against: str, *extra: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["plan", "--matrix", MATRIX, "--select", *FIXTURE, "--against", against, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    return tmp_path / "mirror"


def test_cli_empty_mirror_plans_the_group(mirror: Path, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    cells = fixture_cells()
    assert [c.python for c in cells] == ["3.11", "3.12"]
    out_file = tmp_path / "github_output"
    code, out, _ = run_plan(capsys, str(mirror), "--json", "--github-output", str(out_file))
    assert code == 0
    doc = json.loads(out)
    assert (doc["cells"], doc["present"], doc["missing"], doc["jobs"]) == (2, 0, 2, 1)
    (entry,) = doc["chunks"][0]["include"]
    assert entry["group"] == cells[0].group and entry["pythons"] == ["3.11", "3.12"] and entry["cells"] == 2
    assert select(expand(load(MATRIX)), entry["select"].split()) == cells
    outputs = dict(line.split("=", 1) for line in out_file.read_text().splitlines())
    assert set(outputs) == {"matrix", "jobs", "missing", "chunks"}
    assert json.loads(outputs["matrix"]) == doc["chunks"][0]
    assert (outputs["jobs"], outputs["missing"], outputs["chunks"]) == ("1", "2", "1")


def test_cli_partial_then_complete_mirror(mirror: Path, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    cp311, cp312 = fixture_cells()
    publish(LocalStore(mirror), [stand_in(cp311, tmp_path / "house")], Options())
    code, out, _ = run_plan(capsys, str(mirror), "--json")
    doc = json.loads(out)
    assert (code, doc["present"], doc["missing"]) == (0, 1, 1)
    assert doc["chunks"][0]["include"][0]["select"].endswith("python=3.12")
    assert doc["chunks"][0]["include"][0]["pythons"] == ["3.12"]

    publish(LocalStore(mirror), [stand_in(cp312, tmp_path / "house")], Options())
    start = time.monotonic()
    code, out, _ = run_plan(capsys, str(mirror))
    assert code == 0 and out.startswith("nothing to build: all 2 selected cells are in")
    assert time.monotonic() - start < 60
    code, out, _ = run_plan(capsys, str(mirror), "--json", "--github-output", str(tmp_path / "o"))
    assert json.loads(out)["chunks"] == []
    assert "jobs=0\n" in (tmp_path / "o").read_text()
    assert 'matrix={"include":[]}' in (tmp_path / "o").read_text()
    code, out, _ = run_plan(capsys, str(mirror), "--force", "--json")
    assert json.loads(out)["missing"] == 2


def test_cli_failed_audit_and_gpu_gate(mirror: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cp311, cp312 = fixture_cells()
    publish(LocalStore(mirror), [stand_in(cp311, tmp_path / "a", audit=False)], Options(audit_gate=False))
    publish(LocalStore(mirror), [stand_in(cp312, tmp_path / "b", gpu=True)], Options())
    doc = json.loads(run_plan(capsys, str(mirror), "--json")[1])
    assert doc["missing"] == 1 and doc["incomplete"] == [cp311.wheel]
    assert any("publish --replace" in w for w in doc["warnings"])
    doc = json.loads(run_plan(capsys, str(mirror), "--json", "--require-gpu-result")[1])
    assert doc["missing"] == 1  # cp312 has a passing GPU result; cp311 fails its audit anyway


def test_cli_named_target_and_default_mirror(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cp311, _ = fixture_cells()
    publish(LocalStore(tmp_path / "m"), [stand_in(cp311, tmp_path / "house")], Options())
    monkeypatch.setenv("WHEELFARM_MIRROR", str(tmp_path / "m"))
    capsys.readouterr()
    assert main(["plan", "--matrix", MATRIX, "--select", *FIXTURE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["present"] == 1


def test_store_reader_lists_names_only(tmp_path: Path) -> None:
    cp311, cp312 = fixture_cells()
    store = LocalStore(tmp_path / "m")
    publish(store, [stand_in(cp311, tmp_path / "house")], Options())
    reader = StoreReader(store)
    held = holding([cp311, cp312], reader)
    assert held.present == {cp311.wheel} and not held.incomplete
    assert reader.read(wheel_path(cp312) + ".audit.json") is None  # unlisted: not even asked for


# ----------------------------------------------------------------------------------- a mirror over HTTP


@pytest.fixture
def served(mirror: Path) -> Iterator[str]:
    mirror.mkdir(parents=True, exist_ok=True)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(mirror)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_cli_against_a_served_mirror(mirror: Path, served: str, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    cp311, cp312 = fixture_cells()
    assert json.loads(run_plan(capsys, served, "--json")[1])["missing"] == 2  # no project page yet: 404
    publish(LocalStore(mirror), [stand_in(cp311, tmp_path / "house")], Options())
    doc = json.loads(run_plan(capsys, served + "/", "--json")[1])
    assert (doc["present"], doc["missing"]) == (1, 1)
    publish(LocalStore(mirror), [stand_in(cp312, tmp_path / "house", audit=None)], Options(audit_gate=False))
    doc = json.loads(run_plan(capsys, served, "--json")[1])
    assert doc["missing"] == 1 and doc["incomplete"] == [cp312.wheel]
    doc = json.loads(run_plan(capsys, served, "--json", "--require-gpu-result")[1])
    assert doc["missing"] == 2


def test_bad_max_jobs_exits_2(mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_plan(capsys, str(mirror), "--max-jobs", "300")
    assert code == 2 and "between 1 and 256" in err


# ------------------------------------------------------------ time to a new release: one toml edit (issue 18)

TORCH_2_15 = '''
[torch."2.15"]
cuda = ["12.6", "13.0", "13.2"]
pypi-cuda = "13.2"
python = ">=3.11,<3.16"
cxx11abi = [true]
cxx-std = 20

[torch."2.15".linux_aarch64]
cuda = ["12.6", "13.0", "13.2"]
'''


def with_torch_2_15(tmp_path: Path) -> Path:
    """The shipped matrix plus one new cell family: a [torch."2.15"] table, "2.15" in the FA2 blocks' torch axis,
    and an exclude for the Python it has no wheels for (refused with that reason otherwise)."""
    text = Path(MATRIX).read_text()
    cu12 = '"2.13", "2.14"]\ncuda = ["12.9"]'
    cu13 = '"2.13", "2.14"]\ncuda = ["13.0"]\npython = ["3.10", "3.11", "3.12", "3.13", "3.14"]\ncxx11abi = [true]\n'
    assert text.count(cu12) == text.count(cu13) == 1
    text = text.replace(cu12, cu12.replace('"2.14"]', '"2.14", "2.15"]'))
    no_cp310 = 'exclude = [{ torch = "2.15", python = "3.10" }]\n'
    text = text.replace(cu13, cu13.replace('"2.14"]', '"2.14", "2.15"]') + no_cp310)
    text = text.replace("exclude = [\n    { torch = [\"2.6\", \"2.7\", \"2.8\"], python = \"3.14\" },",
                        "exclude = [\n    { torch = \"2.15\", python = \"3.10\" },\n"
                        "    { torch = [\"2.6\", \"2.7\", \"2.8\"], python = \"3.14\" },", 1)
    text = text.replace("\n# For reference, not asked for", TORCH_2_15 + "\n# For reference, not asked for", 1)
    path = tmp_path / "build_matrix.toml"
    path.write_text(text)
    (tmp_path / "patches").symlink_to(ROOT / "patches")
    return path


def test_a_new_torch_plans_exactly_its_jobs(tmp_path: Path) -> None:
    """Against a mirror holding every cell of the shipped matrix (complete, passing audits), the edited matrix
    plans only the new torch's cells: one job per (CUDA major, platform), the Pythons 3.11-3.14 together."""
    before = {c.wheel for c in expand(load(MATRIX))}
    config = load(with_torch_2_15(tmp_path))
    after = expand(config)
    new = [c for c in after if c.wheel not in before]
    assert new and {c.torch for c in new} == {"2.15"} and before < {c.wheel for c in after}
    files = {}
    for c in after:
        if c.wheel in before:
            files[wheel_path(c)] = b""
            files[wheel_path(c) + ".audit.json"] = _result(True)
    held = holding(after, FakeReader(files))
    assert held.present == before and not held.incomplete
    result = plan(after, held.present, runners={n: p.runner for n, p in config.platforms.items()})
    assert sorted(result.missing) == sorted(new)
    jobs = {(j.group, j.platform): (j.pythons, j.runner) for j in result.jobs}
    label = "flash-attn-2.8.3.post2+cu{}torch2.15cxx11abiTRUE-sm80_90_100_120"
    assert jobs == {(label.format(cuda), platform): (("3.11", "3.12", "3.13", "3.14"), runner)
                    for cuda in (12, 13)
                    for platform, runner in (("linux_x86_64", "ubuntu-24.04"), ("linux_aarch64", "ubuntu-24.04-arm"))}
    for job in result.jobs:
        assert sorted(select(after, job.select)) == sorted(job.cells)


def test_cli_plans_only_the_new_torch_against_a_real_mirror(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same through the CLI and a real local mirror holding the published neighbours (torch 2.14's
    standard FA2 cells, stand-in wheels with passing audits): only torch 2.15's jobs come out, with runners."""
    path = with_torch_2_15(tmp_path)
    scope = ["package=flash-attn", "torch=2.1[45]", "variant="]
    cells = select(expand(load(path)), scope)
    old = [c for c in cells if c.torch == "2.14"]
    publish(LocalStore(tmp_path / "mirror"), [stand_in(c, tmp_path / "house") for c in old], Options())
    capsys.readouterr()
    assert main(["plan", "--matrix", str(path), "--select", *scope, "--against", str(tmp_path / "mirror"),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["cells"], doc["present"]) == (len(cells), len(old))
    include = doc["chunks"][0]["include"]
    assert sorted((e["group"].split("+")[1].split("-")[0], e["runner"]) for e in include) == sorted(
        (f"cu{m}torch2.15cxx11abiTRUE", r) for m in (12, 13) for r in ("ubuntu-24.04", "ubuntu-24.04-arm"))
    assert sum(e["cells"] for e in include) == doc["missing"] == len(cells) - len(old)


def test_the_shipped_matrix_fits_one_github_matrix(matrix_cells: list[Cell]) -> None:
    """An empty mirror plans every cell: one job per (package, version, torch, CUDA, ABI, archs, variant,
    platform), within GitHub's 256 jobs of one matrix; aarch64 jobs go to arm runners."""
    result = plan(matrix_cells, set(), runners=RUNNERS)
    keys = {(c.package, c.version, c.torch, c.cuda, c.cxx11abi, c.archs, c.variant, c.platform)
            for c in matrix_cells}
    assert len(result.jobs) == len(keys) and len(result.chunks) == 1 and len(result.jobs) <= MATRIX_LIMIT
    assert {j.runner for j in result.jobs if j.platform == "linux_aarch64"} == {"ubuntu-24.04-arm"}
    assert {j.runner for j in result.jobs if j.platform == "linux_x86_64"} == {"ubuntu-24.04"}
