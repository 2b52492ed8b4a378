"""README figures come from committed records, and `make bench` reports what the issue asks for."""


from perf.measure import bench
from perf.reports import records
from perf.measure.results import BenchRecord, save


def test_readme_matches_the_committed_records():
    text = records.README.read_text()
    block = text.split(records.BEGIN, 1)[1].split(records.END, 1)[0]
    assert records.BEGIN + block + records.END == records.readme_block(), \
        "README.md disagrees with records/: run `python -m tck readme` (or `make bench`)"


def test_bench_names_isa_recipe_data_and_fidelity_and_regenerates_the_table(tmp_path):
    doc_path = save(BenchRecord(
        model="digits", command="make bench", method="test",
        models=[bench.bench_model("digits", tmp_path / "build", threads=1, budget_s=0.02, replicates=2)]), tmp_path)
    doc = BenchRecord.read(doc_path)
    m = doc.models[0]
    assert m["data"] == "real" and m["gated"] and m["int8_isa"] == doc.environment["int8_isa"]
    for key in ("int8_cpu_over_fp32_batch_1", "int8_cpu_over_fp32_batch_32", "int8_qdq_over_fp32_batch_32"):
        r = m["ratios"][key]
        assert r["replicates"] == 2 and r["low"] <= r["median"] <= r["high"]
    assert m["fidelity"]["int8_cpu"]["gate"] == "passed" and m["fidelity"]["int8_cpu"]["agreement"] >= 0.995
    lines = bench.summary_lines(doc)
    assert lines[0].startswith(f"digits (real data, gated); CPU {m['int8_isa']}, recipe {m['cpu_recipe']}")
    rec = records.BenchSummary.read(records.record_bench(doc, tmp_path / "records"))
    assert rec.int8_isa == m["int8_isa"] and rec.command == "make bench"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{records.BEGIN}\nstale\n{records.END}\nrest\n")
    assert records.render_readme(readme, tmp_path / "records")
    assert "| digits | real data, gated |" in readme.read_text() and "stale" not in readme.read_text()
    assert not records.render_readme(readme, tmp_path / "records")


def test_the_tuner_line_says_whether_its_final_round_ran():
    """The tuner's seconds include its final round only when one ran: the README says which."""
    import dataclasses
    rec = records.TunerBenchSummary.read(records.RECORDS_DIR / "bench-tuner-digits.json")
    said = {s: records._tuner_lines(dataclasses.replace(rec, final_round=s))[0]
            for s in ("ran", "none within band", "")}
    assert "(its final round included)" in said["ran"]
    assert "its final round not run: no other config within" in said["none within band"]
    assert "if it ran" in said[""]


def test_a_bench_tuner_record_round_trips_typed_and_feeds_its_summary(tmp_path):
    """The bench-tuner record's tuner, grid and head-to-head parts are typed records: written, read back
    equal (the grid's configs as Measured, with their serving configs), and summarized from fields."""
    from build_engines.spec import ServingConfig, load_spec
    from perf.measure.results import Interval
    from perf.tuning.tuner import BenchTunerRecord, Candidate, GridSide, HeadToHeadRow, Measured, TunerSide
    serving = ServingConfig.from_spec(load_spec("digits"), dynamic_batching=True, max_batch_size=8,
                                     preferred_batch_sizes=(4,), instances=2)
    grid_best = Measured(Candidate("int8", serving), "grid", 900.0, 12, 8.5, 950.0, [], 5, capacities=[950.0])
    doc = BenchTunerRecord(model="digits", sla_ms=10.0, percentile="p99", command="make bench-tuner MODEL=digits",
                           tuner=TunerSide(40, 11, "fp32, no batching, 2x1t", 1000.0, 1010.0, 150.0, "ran"),
                           grid=GridSide(300, 76, 1345.0, [grid_best.label], [grid_best]),
                           head_to_head={"pick": HeadToHeadRow("fp32, no batching, 2x1t", 16, [1010.0, 990.0, 1005.0],
                                                               [1000.0, 980.0, 1000.0], [16, 16, 17], [9.0, 9.5, 8.8]),
                                         "grid #1": HeadToHeadRow(grid_best.label, 12, [950.0, 960.0, 940.0],
                                                                  [900.0, 910.0, 890.0], [12, 12, 12], [8.5, 8.7, 8.4])},
                           best="grid #1", quality=Interval(1.05, 1.03, 1.07, 3), measured_share=150.0 / 1345.0)
    back = BenchTunerRecord.read(save(doc, tmp_path, name="digits"))
    assert back.grid.all[0].serving == serving and back.head_to_head["grid #1"].capacity == [950.0, 960.0, 940.0]
    assert back.tuner == doc.tuner and back.grid.top == [grid_best.label]
    rec = records.TunerBenchSummary.read(records.record_bench_tuner(back, tmp_path / "records"))
    assert (rec.pick, rec.best_other, rec.rounds, rec.tuner_configs, rec.grid_configs, rec.final_round) == \
        ("fp32, no batching, 2x1t", grid_best.label, 3, 11, 76, "ran")


def test_a_record_says_dirty_when_the_measured_code_is_not_a_commit(tmp_path):
    """records' commit: HEAD, marked -dirty where a tracked file other than records/ and the README (which
    the recording run rewrites itself) differs from it; untracked files do not count."""
    import subprocess
    from perf.reports.records import _commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    (tmp_path / "records").mkdir()
    for f in ("code.py", "README.md", "records/r.json"):
        (tmp_path / f).write_text("1\n")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    assert _commit(tmp_path) == head
    (tmp_path / "README.md").write_text("2\n")
    (tmp_path / "records" / "r.json").write_text("2\n")
    (tmp_path / "new.py").write_text("untracked\n")
    assert _commit(tmp_path) == head
    (tmp_path / "code.py").write_text("2\n")
    assert _commit(tmp_path) == head + "-dirty"
    plain = tmp_path / "records" / "plain"           # a folder git does not know: no commit to name
    plain.mkdir()
    (plain / ".git").write_text("gitdir: /nonexistent\n")
    assert _commit(plain) == "unknown"
