"""``wheelfarm bench``: the arithmetic of each ratio (table-driven on small logs), the committed H100 records, the
upstream method's flags, and the figures read from the session's real fixture build. The full side-by-side run is
``nox -s bench`` (minutes of builds); its numbers are in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from farmtest import FixtureBuild, run_wheelfarm
from wheelfarm import bench, jobs
from wheelfarm.build import BuildPaths, BuildResult
from wheelfarm.compile_cache import CacheStats, CacheTarget
from wheelfarm.config import load
from wheelfarm.errors import BadInput
from wheelfarm.matrix import expand, select
from wheelfarm.monitor import Peaks

ROOT = Path(__file__).resolve().parents[1]
GPU_RUN = ROOT / "docs/gpu-runs/2026-11-25-h100-flash-attn-2.8.3.post2-sm90"


def ninja_log(*rows: tuple[int, int, str]) -> str:
    return "# ninja log v7\n" + "".join(f"{s}\t{e}\t0\tbuild/temp/{name}\tcafe\n" for s, e, name in rows)


# ------------------------------------------------------------------------------------------ ninja logs


def test_parse_ninja_log_sums_jobs_and_spans_first_start_to_last_end() -> None:
    stats = bench.parse_ninja_log(ninja_log((0, 40_000, "long.o"), (0, 10_000, "a.o"), (10_000, 30_000, "b.o")))
    assert stats.objects == 3 and stats.job_s == 70.0 and stats.span_s == 40.0
    assert stats.longest == ("long.o", 40.0)
    assert stats.limit_s(2) == 35.0 and stats.bound_s(2) == 40.0 and stats.efficiency(2) == pytest.approx(40 / 35)
    assert stats.seconds_of(["a.o", "missing.o"]) == 10.0


def test_parse_ninja_log_keeps_the_last_entry_of_an_output() -> None:
    stats = bench.parse_ninja_log(ninja_log((0, 5_000, "a.o"), (0, 7_000, "a.o")))
    assert stats.seconds == {"a.o": 7.0}


def test_an_empty_ninja_log_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no entries"):
        bench.parse_ninja_log("# ninja log v7\n")
    with pytest.raises(BadInput, match="no ninja log at"):
        bench.read_ninja_log(tmp_path / "none")


# ------------------------------------------------------------------------------------------------ goals


@pytest.mark.parametrize(
    ("metric", "value", "met"),
    [("cold-vs-upstream", 0.88, True), ("cold-vs-upstream", 0.96, False), ("extra-python", 0.06, True),
     ("extra-python", 0.61, False), ("span-vs-limit", 1.086, False), ("span-vs-limit", 1.05, True),
     ("peak-vs-plan", 0.94, True), ("plan-seconds", 59.9, True), ("plan-seconds", 60.0, False),
     ("plan-seconds", None, None)],
)
def test_goals(metric: str, value: float | None, met: bool | None) -> None:
    figure = bench.Figure(metric, value, "somewhere", "how")
    assert figure.met is met
    assert figure.to_json()["goal"] == str(bench.GOALS[metric])


def test_goal_spelling() -> None:
    assert str(bench.GOALS["cold-vs-upstream"]) == "≤0.88×"
    assert str(bench.GOALS["plan-seconds"]) == "<60 s"


@pytest.mark.parametrize("spec", ["log", "log:x", "log:0", ""])
def test_bad_ninja_log_spec(spec: str) -> None:
    with pytest.raises(BadInput, match="PATH:CORES"):
        bench.parse_log_spec(spec)


def test_ninja_log_spec_with_and_without_label() -> None:
    assert bench.parse_log_spec("/x/log:16:H100, upstream") == bench.RecordedRun(Path("/x/log"), 16, "H100, upstream")
    assert bench.parse_log_spec("/x/log:2").machine == "2 cores (/x/log)"


# -------------------------------------------------------------------------------------- recorded runs


def test_the_committed_h100_run_is_found_with_its_machine_and_numbers() -> None:
    runs = [r for r in bench.recorded_runs(ROOT) if r.ninja_log.parent == GPU_RUN]
    assert len(runs) == 1
    run = runs[0]
    assert run.cores == 16 and "H100" in run.machine
    assert run.cell_seconds == 1279.6 and run.peak_mb == 60429 and run.predicted_mb == 16 * 4000


def test_the_committed_h100_run_gives_the_documented_ratios() -> None:
    run = next(r for r in bench.recorded_runs(ROOT) if r.ninja_log.parent == GPU_RUN)
    figures = {(f.metric, f.source): f for f in bench.recorded_figures(run)}
    span = figures["span-vs-limit", "recorded"]
    assert span.value == pytest.approx(1229 / (18_110 / 16), abs=0.002) and span.met is False
    share = figures["extra-python", "projection (job-s share)"]
    assert share.value == pytest.approx(46.6 / 18_110, abs=1e-4) and share.met is True
    wall = figures["extra-python", "projection (wall)"]
    assert wall.value == pytest.approx((46.6 + 1279.6 - 1228.9) / 1279.6, abs=0.002)
    assert figures["peak-vs-plan", "recorded"].value == pytest.approx(60429 / 64000)


def test_a_log_without_a_build_record_gives_span_and_share_only(tmp_path: Path) -> None:
    log_file = tmp_path / "ninja_log"
    log_file.write_text(ninja_log((0, 100_000, "flash_api.o"), (0, 900_000, "kernel.o")))
    figures = bench.recorded_figures(bench.RecordedRun(log_file, 2, "a 2-core box"))
    assert [(f.metric, f.source) for f in figures] == [("span-vs-limit", "recorded"),
                                                      ("extra-python", "projection (job-s share)")]
    assert figures[0].value == pytest.approx(900 / (1000 / 2))
    assert figures[1].value == pytest.approx(0.1)


# --------------------------------------------------------------------------------------- measured runs


def _cell():
    config = load(ROOT / "build_matrix.toml")
    return config, select(expand(config), ["package=fixture-attn", "python=3.11"])[0]


def _result(tmp_path: Path, seconds: float, *, python: str = "3.11", peak: int = 2000, hits: int = 0
            ) -> BuildResult:
    config = load(ROOT / "build_matrix.toml")
    cell = select(expand(config), ["package=fixture-attn", f"python={python}"])[0]
    plan = jobs.plan(cores=2, memory=jobs.Memory(20_000, "test"), per_job_mb=1200, per_job_source="test",
                     archs=2, nvcc_threads=1)
    return BuildResult(cell, True, tmp_path / f"{python}.log", seconds, plan, peaks=Peaks(total_mb=peak),
                       cache=CacheStats(hits={"CUDA": hits}))


def test_measured_figures(tmp_path: Path) -> None:
    (tmp_path / "build.ninja").write_text("build /b/binding.o: compile /s/binding.cpp\n"  # the host compiler
                                          "build /b/a.o: cuda_compile /s/a.cu\nbuild /b/b.o: cuda_compile /s/b.cu\n")
    logs = {role: bench.parse_ninja_log(text) for role, text in {
        "wf": ninja_log((0, 40_000, "binding.o"), (0, 20_000, "a.o"), (20_000, 40_000, "b.o")),
        "up": ninja_log((0, 40_000, "binding.o"), (0, 20_000, "a.o"), (20_000, 45_000, "b.o")),
    }.items()}
    first = bench.Measured("wheelfarm", _result(tmp_path, 60.0), logs["wf"], ninja_log=tmp_path / ".ninja_log")
    upstream = bench.Measured("upstream", _result(tmp_path, 75.0), logs["up"])
    extra = bench.Measured("wheelfarm+python", _result(tmp_path, 30.0, python="3.12", hits=2), None)
    figures = bench.measured_figures("box", first, [extra], upstream)
    got = {(f.metric, f.source, f.how.split(" ")[0]): f.value for f in figures}
    assert got["cold-vs-upstream", "measured", "60.0"] == pytest.approx(0.8)
    assert got["extra-python", "measured", "Python"] == pytest.approx(0.5)
    # the projection: binding.o (40 s) + the 20 s outside ninja, over the 60 s cell
    assert got["extra-python", "projection", "Python-dependent"] == pytest.approx(1.0)
    assert got["span-vs-limit", "measured", "wheelfarm"] == pytest.approx(40 / 40)
    assert got["span-vs-limit", "measured", "upstream"] == pytest.approx(45 / 42.5)
    assert got["peak-vs-plan", "measured", "2,000"] == pytest.approx(2000 / (2 * 1200))
    assert all(f.machine == "box" for f in figures)


def test_the_upstream_method_is_the_sdists_own_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(bench, "build_cell", lambda *a, **kw: seen.update(kw) or "built")
    config, cell = _cell()
    paths = BuildPaths(tmp_path, tmp_path / "wh")
    assert bench.upstream_build(config, cell, None, paths) == "built"  # type: ignore[arg-type]
    cores = jobs.usable_cores()
    assert seen == {"max_jobs": cores, "retry_oom": False, "compile_cache": False, "lpt": False,
                    "extra_env": {"MAX_JOBS": str(cores), "NVCC_THREADS": "2"}}


def test_fresh_work_dirs_are_emptied_and_seeded_with_sdists(tmp_path: Path) -> None:
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    (sdists / "p-1.0.tar.gz").write_bytes(b"sdist")
    old = tmp_path / "bench" / "leftover"
    old.mkdir(parents=True)
    paths = bench._fresh(tmp_path / "bench", [sdists, tmp_path / "absent"])
    assert sorted(p.name for p in paths.work_dir.iterdir()) == ["sdists"]
    assert (paths.work_dir / "sdists" / "p-1.0.tar.gz").read_bytes() == b"sdist"


def test_pick_group_takes_one_group_its_pythons_in_order() -> None:
    config = load(ROOT / "build_matrix.toml")
    cells = select(expand(config), ["package=fixture-attn"])
    group = bench.pick_group(list(reversed(cells)))
    assert [c.python for c in group] == ["3.11", "3.12"] and len({c.group for c in group}) == 1
    with pytest.raises(BadInput):
        bench.pick_group([])


def test_plan_over_a_complete_mirror_finds_nothing_missing(tmp_path: Path) -> None:
    config = load(ROOT / "build_matrix.toml")
    figure = bench.time_plan(config, tmp_path)
    assert figure.value is not None, figure.how
    assert "0 missing" in figure.how and figure.met is True


# ----------------------------------------------------------------------------------------------- the CLI


def test_bench_without_builds_prints_and_saves_every_recorded_figure(tmp_path: Path) -> None:
    report = tmp_path / "out" / "bench.json"
    proc = run_wheelfarm("bench", "--no-build", "--work-dir", str(tmp_path / "w"), "--json", str(report),
                         "--ninja-log", f"{GPU_RUN / 'ninja_log'}:16:H100 again")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["schema"] == 1 and data["machine"].startswith("this host: ")
    metrics = [(f["metric"], f["machine"]) for f in data["figures"]]
    assert ("span-vs-limit", "H100 again") in metrics
    assert sum(m == "span-vs-limit" and "H100" in where for m, where in metrics) == 2
    assert all(f["goal"] and f["how"] for f in data["figures"])
    assert "ratios against their goals" in proc.stderr and "figures meet their goal" in proc.stderr


# ------------------------------------------------------------------------- the session's fixture build


def test_figures_from_the_real_fixture_build(fixture_build: FixtureBuild) -> None:
    """The same readers bench uses, on the shared fixture build: its ninja log and its Python-dependent object."""
    config = load(ROOT / "build_matrix.toml")
    cells = {c.python: c for c in select(expand(config), ["package=fixture-attn"])}
    paths = BuildPaths(fixture_build.work_dir, fixture_build.wheelhouse)
    first_log = bench.cell_ninja_log(paths, cells["3.11"])
    assert first_log is not None
    stats = bench.read_ninja_log(first_log)
    assert stats.objects == 6 and stats.efficiency(jobs.usable_cores()) >= 1.0
    assert bench.python_dependent_objects(first_log, stats) == ["binding.o"]
    second = fixture_build.result("3.12")
    assert second["compile_cache"]["kernel_hits"] == 5
    assert second["seconds"] < fixture_build.result("3.11")["seconds"]


def test_rounds_combine_to_medians_and_the_highest_peak() -> None:
    def round_(cold: float, peak: float) -> list[bench.Figure]:
        return [bench.Figure("cold-vs-upstream", cold, "box", "a / b"), bench.Figure("peak-vs-plan", peak, "box", "p"),
                bench.Figure("plan-seconds", None, "box", "not yet measured")]

    combined = bench.combine([round_(0.9, 0.8), round_(1.1, 0.95), round_(0.95, 0.7)])
    assert [f.value for f in combined] == [0.95, 0.95, None]
    assert combined[0].how.startswith("median of 3 rounds (0.900, 1.100, 0.950); round 1: a / b")
    assert combined[1].how.startswith("highest of 3 rounds")
    assert bench.combine([round_(0.9, 0.8)]) == round_(0.9, 0.8)


def test_forgetting_one_pythons_build_keeps_the_group_and_other_pythons(tmp_path: Path) -> None:
    """The same-interpreter stand-in for another Python: only that Python's setup.py folders and wheel go; the
    source tree, the other Pythons' folders and the compile cache stay."""
    _config, cell = _cell()
    paths = BuildPaths(tmp_path, tmp_path / "wh")
    build = paths.group_dir(cell) / "source" / "pkg-1.0" / "build"
    tag = cell.python.replace(".", "")
    mine = [build / f"temp.linux-x86_64-cpython-{tag}", build / f"lib.linux-x86_64-cpython-{tag}"]
    other = build / "temp.linux-x86_64-cpython-399"
    for folder in (*mine, other, tmp_path / "compile-cache" / "ab"):
        folder.mkdir(parents=True)
        (folder / "x.o").write_bytes(b"o")
    paths.wheelhouse.mkdir()
    (paths.wheelhouse / cell.wheel).write_bytes(b"wheel")
    assert bench.forget_python_build(paths, cell) == sorted(mine)
    assert not any(p.exists() for p in mine) and not (paths.wheelhouse / cell.wheel).exists()
    assert (other / "x.o").exists() and (tmp_path / "compile-cache" / "ab" / "x.o").exists()


def test_an_extra_python_on_the_same_interpreter_says_so(tmp_path: Path) -> None:
    first = bench.Measured("wheelfarm", _result(tmp_path, 100.0), None)
    again = bench.Measured(bench.SAME_PYTHON, _result(tmp_path, 8.0, hits=72), None)
    figure = next(f for f in bench.measured_figures("gpu box", first, [again], None) if f.metric == "extra-python")
    assert figure.value == pytest.approx(0.08) and "the same interpreter again" in figure.how


def test_a_second_runner_is_judged_by_the_kernel_objects_it_compiled(tmp_path: Path) -> None:
    first = bench.Measured("wheelfarm", _result(tmp_path, 100.0), None)
    served = _result(tmp_path, 30.0, hits=5)
    served.cache = CacheStats(location="S3, bucket: b", hits={"CUDA": 5, "PTX": 10}, misses={"C/C++": 1})
    partial = _result(tmp_path, 60.0)
    partial.cache = CacheStats(hits={"CUDA": 3}, misses={"CUDA": 2, "C/C++": 1})
    runners = [bench.Measured(bench.SECOND_RUNNER, r, None) for r in (served, partial)]
    figures = [f for f in bench.measured_figures("box", first, runners, None) if f.metric == "second-runner"]
    assert [(f.value, f.met) for f in figures] == [(0, True), (2, False)]
    assert "5 .cu objects from the cache, 0 compiled" in figures[0].how and "0.300×" in figures[0].how
    assert not any(f.metric == "extra-python" and f.source == "measured" for f in
                   bench.measured_figures("box", first, runners, None))  # a second runner is not another Python
    assert bench.GOALS["second-runner"].show(0) == "0 objects"


def test_each_round_starts_from_an_empty_shared_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Round 2's cold build must not read round 1's objects: a shared cache gets a fresh prefix per round."""
    seen: list[Any] = []

    def fake_round(config, group, tcs, opts, upstream_first):
        seen.append(opts.cache)
        first = bench.Measured("wheelfarm", _result(tmp_path, 60.0), None)
        return first, None, []

    monkeypatch.setattr(bench, "run_round", fake_round)
    monkeypatch.setattr(bench.toolchain, "prepare", lambda *a, **kw: None)
    config, cell = _cell()
    opts = bench.Options(work_dir=tmp_path, cache=CacheTarget(bucket="b", prefix="sccache"))
    bench.run(config, [cell], ["package=fixture-attn"], opts, rounds=2)
    assert [c.bucket for c in seen] == ["b", "b"] and len({c.prefix for c in seen}) == 2
    assert all(c.prefix.startswith("sccache/bench-") for c in seen)


def test_the_upstream_time_leaves_out_wheelfarms_relabel(tmp_path: Path) -> None:
    """Upstream's method ends with pip's wheel; relabelling it (METADATA, torch pin) is wheelfarm's own work."""
    first = bench.Measured("wheelfarm", _result(tmp_path, 60.0), None)
    up_result = _result(tmp_path, 75.0)
    up_result.phases = {"prepare": 1.0, "pip wheel": 59.0, "relabel": 15.0}
    figure = bench.measured_figures("box", first, [], bench.Measured("upstream", up_result, None))[0]
    assert figure.metric == "cold-vs-upstream" and figure.value == pytest.approx(60 / 60)
