"""Model Analyzer's concurrent mode: the profile we hand it, and its pick read back from a real run's
output (tests/data/model-analyzer-concurrent: Model Analyzer 1.58 on digits, signals and the MiniLM
encoder together, 2026-12-07, AMD EPYC 2 cores; its CSV and summary, the configs it picked, the
"Profiling" lines of its log). That run's quick search measured 19 combinations in 23 min, then
proposed measured ones again without end (65,518 "Existing measurement found ... Skipping profile"
in 13 s of log): it was stopped and its tables and summary written by Model Analyzer's own code
from its checkpoint, the search skipped. The configs are its checkpoint's, as protobuf text."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from build_engines.spec import ServingConfig, load_spec
from perf.cost.fleet import Served
from perf.cost.fleet_peer import its_pick, summary_pick
from perf.measure.frontier import Sla
from perf.tuning import peer

DATA = Path(__file__).resolve().parents[2] / "data" / "model-analyzer-concurrent"


def served() -> dict[str, Served]:
    out = {}
    for name, model in (("digits", "digits_fp32"), ("signals", "signals_fp32"), ("minilm", "minilm_text_fp32")):
        out[name] = Served(name, model, "fp32", ServingConfig(), "test", 0.1, 1e6, 10.0, "p99", "x")
    return out


def test_its_pick_is_the_combination_its_summary_names_with_its_configs_and_time():
    pick = its_pick(DATA, served(), 0.0)
    assert pick.names == {"digits": "digits_fp32_config_3", "signals": "signals_fp32_config_0",
                          "minilm": "minilm_fp32_config_2"}               # the ensemble's encoder: what it tuned
    assert pick.throughput == {"digits": 2157.1, "signals": 991.6, "minilm": 96.7}   # the per-model list, not the sum
    d, m = pick.configs["digits"], pick.configs["minilm"]
    assert (d.dynamic_batching, d.max_batch_size, d.instances) == (True, 1, 2)
    assert (m.dynamic_batching, m.max_batch_size, m.instances) == (True, 2, 1)
    assert pick.seconds == 1418.0 and pick.measurements == 20


def test_a_summary_that_finds_no_gain_still_names_its_pick():
    """Its summary says "is N% better than the default" or, as in this run, "provides no gain over" it."""
    assert summary_pick(DATA) == ["digits_fp32_config_3", "signals_fp32_config_0", "minilm_fp32_config_2"]


def test_without_a_summary_the_first_row_meeting_every_constraint_is_taken(tmp_path):
    work = tmp_path / "ma"
    shutil.copytree(DATA, work)
    shutil.rmtree(work / "export" / "reports")
    assert summary_pick(work) is None
    assert its_pick(work, served(), 0.0).names["digits"] == "digits_fp32_config_3"   # row 1 meets them all
    csv_path = work / "export" / "results" / "metrics-model-inference.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text(lines[0] + "".join(lines[2:]))                  # without row 1, row 2 misses minilm's
    pick = its_pick(work, served(), 0.0)                                # p99 (143 ms > 100): row 3
    assert pick.names == {"digits": "digits_fp32_config_0", "signals": "signals_fp32_config_0",
                          "minilm": "minilm_fp32_config_2"}


def test_the_concurrent_profile_gives_each_model_its_own_sla_inputs_and_our_stability_bar(tmp_path):
    models = [peer.Profiled("digits_fp32", load_spec("digits"), Sla(10.0), "digits.json"),
              peer.Profiled("signals_fp32", load_spec("signals"), Sla(25.0, "p95"), "signals.json")]
    cfg = peer.concurrent_config(models, tmp_path / "in", tmp_path, 2, 16)
    assert cfg["run_config_profile_models_concurrently_enable"] is True and cfg["run_config_search_mode"] == "quick"
    d, s = cfg["profile_models"]["digits_fp32"], cfg["profile_models"]["signals_fp32"]
    assert d["constraints"] == {"perf_latency_p99": {"max": 10.0}} and s["constraints"] == {"perf_latency_p95": {"max": 25.0}}
    assert d["perf_analyzer_flags"]["input-data"].endswith("digits.json")
    assert s["perf_analyzer_flags"]["stability-percentage"] == "25.0"
    assert {"perf_latency_p95", "perf_latency_p99"} <= set(cfg["inference_output_fields"])
    assert cfg["triton_server_environment"]["PATH"].startswith(str(peer.TOOLS / "bin"))   # its mpiexec


@pytest.mark.skipif(not (peer.TOOLS / "bin" / "mpiexec").exists(), reason="make setup unpacks Open MPI")
def test_mpiexec_runs_a_process_per_model_on_two_cores():
    import subprocess
    r = subprocess.run([str(peer.TOOLS / "bin" / "mpiexec"), "--allow-run-as-root", "-n", "3", "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-500:]


def test_a_search_that_re_proposes_measured_configs_is_seen_as_looping(tmp_path):
    """The loop that run showed: "Skipping profile" lines with no "Profiling" between them, counted across
    reads of a growing log (a line cut by a read is counted once, when it is whole)."""
    log = tmp_path / "model-analyzer.log"
    skip = f"[Model Analyzer] {peer.SKIP_LINE}\n"
    log.write_text("[Model Analyzer] Profiling digits_fp32_config_3: concurrency=4\n" + skip * 5 + skip[:20])
    offset, skips = peer._skips_since_measuring(log, 0, 0)
    assert skips == 5 and offset < log.stat().st_size                   # the cut line is left for next time
    with open(log, "a") as f:
        f.write(skip[20:] + "[Model Analyzer] Profiling signals_fp32_config_0: concurrency=2\n" + skip * 3)
    offset, skips = peer._skips_since_measuring(log, offset, skips)
    assert skips == 3 and offset == log.stat().st_size                  # a new measurement starts the count again


def test_a_looping_search_is_stopped_said_and_summarized(tmp_path, monkeypatch):
    """A stand-in for Model Analyzer that measures once, then only re-proposes (and would wait forever):
    it is stopped by SIGINT, its tables are asked for from its checkpoint, and the run says so."""
    import sys
    import time
    fake = tmp_path / "model-analyzer"
    # SIGINT as Model Analyzer takes it (a job started in the background inherits it ignored)
    fake.write_text(f"#!{sys.executable}\nimport signal, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\nprint('[Model Analyzer] Profiling digits_fp32_config_0: "
                    f"concurrency=1', flush=True)\nfor _ in range({peer.LOOP_SKIPS + 10}):\n"
                    f"    print('[Model Analyzer] {peer.SKIP_LINE}', flush=True)\ntime.sleep(600)\n")
    fake.chmod(0o755)
    summarized, said = [], []
    monkeypatch.setattr(peer, "MODEL_ANALYZER", fake)
    monkeypatch.setattr(peer, "_summarize", lambda work, log, why, mark: summarized.append(work))
    t0 = time.perf_counter()
    seconds = peer._profile(tmp_path, said.append, poll_s=0.2)
    assert time.perf_counter() - t0 < 30 and seconds < 30                # not the hour-long timeout
    assert summarized == [tmp_path] and peer.stopped(tmp_path).startswith("looped: stopped after ")
    assert len(said) == 1 and "looped" in said[0]
    assert int(re.search(r"(\d+) re-proposed", said[0]).group(1)) >= peer.LOOP_SKIPS


def _stand_in(tmp_path, body: str):
    """A Model Analyzer stand-in: it measures once, runs ``body``, then would wait ten minutes."""
    import sys
    fake = tmp_path / "model-analyzer"
    fake.write_text(f"#!{sys.executable}\nimport signal, subprocess, sys, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\nprint('[Model Analyzer] Profiling "
                    f"digits_fp32_config_0: concurrency=1', flush=True)\n{body}\ntime.sleep(600)\n")
    fake.chmod(0o755)
    return fake


def test_a_search_past_its_timeout_keeps_what_it_measured(tmp_path, monkeypatch):
    """The timeout stops the search as a loop does: its tables from its checkpoint, not an error that
    throws its measurements away."""
    summarized, said = [], []
    monkeypatch.setattr(peer, "MODEL_ANALYZER", _stand_in(tmp_path, ""))
    monkeypatch.setattr(peer, "_summarize", lambda work, log, why, mark: summarized.append(why))
    seconds = peer._profile(tmp_path, said.append, poll_s=0.2, timeout_s=1.0)
    assert 1.0 <= seconds < 30 and summarized == ["ran past 1 s"]
    assert peer.stopped(tmp_path).startswith("ran past 1 s: stopped after ") and "ran past 1 s" in said[0]


def test_stopping_it_stops_the_server_it_left_running(tmp_path, monkeypatch):
    """Model Analyzer starts tritonserver in a session of its own; one that exits on SIGINT without
    stopping it (or is killed) left a server holding the cores and ports. It is stopped too."""
    pid_file = tmp_path / "server.pid"
    body = (f"p = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))")
    monkeypatch.setattr(peer, "MODEL_ANALYZER", _stand_in(tmp_path, body))
    monkeypatch.setattr(peer, "_summarize", lambda work, log, why, mark: None)
    peer._profile(tmp_path, lambda _: None, poll_s=0.2, timeout_s=2.0)
    server = int(pid_file.read_text())
    for _ in range(50):                       # killed: gone once init has reaped it
        if (stat := peer._stat(server)) is None or stat[0] == "Z":
            break
        time.sleep(0.1)
    else:
        os.kill(server, 9)
        raise AssertionError("the server it started was left running")


def _server_body(pid_file, termed, after: str = "") -> str:
    """A stand-in tritonserver in a session of its own that notes SIGTERM (``termed``) and exits on it;
    the stand-in goes on (``after``) once the server has its handler (a ready file), so a SIGTERM can
    never arrive before it."""
    import sys
    ready = f"{pid_file}.ready"
    server = (f"import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: (open({str(termed)!r}, 'w').write('TERM'),"
              f" sys.exit(0)))\nopen({ready!r}, 'w').close()\ntime.sleep(600)\n")
    return (f"p = subprocess.Popen([{sys.executable!r}, '-c', {server!r}], start_new_session=True)\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            f"import os\nwhile not os.path.exists({ready!r}):\n    time.sleep(0.05)\n{after}")


def _gone(pid: int) -> bool:
    for _ in range(100):
        if (stat := peer._stat(pid)) is None or stat[0] == "Z":
            return True
        time.sleep(0.1)
    os.kill(pid, 9)
    return False


def test_a_server_left_by_a_search_that_ended_on_its_own_is_stopped_with_sigterm_first(tmp_path, monkeypatch):
    """Model Analyzer exiting on its own (an error, a bug) with its server up: the server is no longer
    below it (its parent is gone), so only the mark in its environment finds it. It gets SIGTERM first,
    so that a tritonserver can unmap its shared memory before any SIGKILL."""
    pid_file, termed = tmp_path / "server.pid", tmp_path / "termed"
    body = _server_body(pid_file, termed, "time.sleep(0.5)\nsys.exit(0)")
    monkeypatch.setattr(peer, "MODEL_ANALYZER", _stand_in(tmp_path, body))
    said = []
    peer._profile(tmp_path, said.append, poll_s=0.2, timeout_s=60)
    assert _gone(int(pid_file.read_text())), "the server it left was left running"
    assert termed.read_text() == "TERM" and said == ["Model Analyzer exited and left 1 of its processes running: "
                                                     "stopped them"]
    assert peer.stopped(tmp_path) == ""                  # it ended on its own: not said stopped


def test_a_server_started_after_the_last_sigint_is_stopped_too(tmp_path, monkeypatch):
    """A process Model Analyzer starts while it is being stopped was in no snapshot of its children."""
    pid_file, termed = tmp_path / "server.pid", tmp_path / "termed"
    body = ("try:\n    time.sleep(600)\nexcept KeyboardInterrupt:\n"
            + "".join(f"    {line}\n" for line in _server_body(pid_file, termed, "sys.exit(0)").splitlines()))
    monkeypatch.setattr(peer, "MODEL_ANALYZER", _stand_in(tmp_path, body))
    monkeypatch.setattr(peer, "_summarize", lambda work, log, why, mark: None)
    peer._profile(tmp_path, lambda _: None, poll_s=0.2, timeout_s=1.0)
    assert _gone(int(pid_file.read_text())), "the server started after the last SIGINT was left running"
    assert termed.read_text() == "TERM"


def test_why_it_was_stopped_is_kept_when_its_tables_cannot_be_written(tmp_path, monkeypatch):
    def fails(work, log, why, mark):
        raise peer.PeerError("writing its tables exited 1")
    monkeypatch.setattr(peer, "MODEL_ANALYZER", _stand_in(tmp_path, ""))
    monkeypatch.setattr(peer, "_summarize", fails)
    with pytest.raises(peer.PeerError, match="writing its tables"):
        peer._profile(tmp_path, lambda _: None, poll_s=0.2, timeout_s=1.0)
    assert peer.stopped(tmp_path).startswith("ran past 1 s: stopped after ")


def test_writing_its_tables_stops_what_that_run_left_running(tmp_path, monkeypatch):
    """The summary runs Model Analyzer's own code, which may start a server too: it carries the mark and
    is stopped once the summary ends."""
    import sys
    pid_file, termed = tmp_path / "server.pid", tmp_path / "termed"
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "model-analyzer").write_text("")
    python = tools / "python"          # what _summarize runs summarize.py with
    python.write_text(f"#!{sys.executable}\nimport subprocess, sys, time\n{_server_body(pid_file, termed)}\n")
    python.chmod(0o755)
    (tmp_path / "profile.yaml").write_text("{}")
    monkeypatch.setattr(peer, "MODEL_ANALYZER", tools / "model-analyzer")
    peer._summarize(tmp_path, tmp_path / "model-analyzer.log", "looped", "test-mark")
    assert _gone(int(pid_file.read_text())), "the server the summary left was left running"
    assert termed.read_text() == "TERM"


def test_the_committed_summary_says_when_its_search_was_stopped(tmp_path):
    """records/bench-fleet-peer-*.json and the README line it renders carry why Model Analyzer's search was
    stopped (a loop, the timeout), not only the run's own folder."""
    from dataclasses import replace
    from build_engines.spec import ServingConfig
    from perf.cost.fleet_peer import OURS, PEER, FleetPeerRecord, PeerPick
    from perf.measure.results import Interval
    from perf.measure.together import MixCapacity
    from perf.reports import records
    s = ServingConfig(max_batch_size=4, preferred_batch_sizes=(), max_queue_delay_us=0, instances=1)
    pick = PeerPick({"a": s}, {"a": "a_config_2"}, {"a": 900.0}, 1027.5, 14, 60)
    doc = FleetPeerRecord(fleet="f", command="make bench-fleet-peer FLEET=f.toml", fleet_results="r.json", ours={"a": s},
                          peer=pick, rounds=2, capacities={OURS: [MixCapacity(1000.0, [])] * 2,
                                                          PEER: [MixCapacity(800.0, [])] * 2},
                          ours_over_peer=Interval(1.25, 1.2, 1.3, 2), monthly_usd={OURS: [10.0, 10.0], PEER: [12.0, None]},
                          instance="c7i.large", environment={"cpu": "X", "cores": 2, "int8_isa": "avx2"})
    plain = records._fleet_peer_lines(records.FleetPeerSummary.read(records.record_fleet_peer(doc, tmp_path)))[0]
    assert "Model Analyzer 14 configs in 17 min)" in plain and "its search" not in plain
    why = "looped (it proposed measured configs again): stopped after 1027 s; tables from its checkpoint"
    path = records.record_fleet_peer(FleetPeerRecord.from_dict(replace(doc, peer=replace(pick, stopped=why)).to_dict()),
                                     tmp_path / "stopped")
    assert records.FleetPeerSummary.read(path).peer_stopped == why
    assert f"Model Analyzer 14 configs in 17 min, its search {why})" in records._fleet_peer_lines(
        records.FleetPeerSummary.read(path))[0]
