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
