"""The pick that holds: the tuner ranks a config by the lowest capacity its repeats measure, the judge
scores by grid loads that met the SLA, and Model Analyzer (the peer) runs for real on the same server
flags, its results read back into our configs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from build_engines.repository import config_text, read_config
from clients import LocalTriton
from perf.errors import SlaUnmet
from perf.measure import analyzer
from perf.measure.frontier import Sla, score
from perf.measure.results import Interval
from perf.tuning import peer
from perf.tuning.judge import GridPoint, grid_score
from perf.tuning.peer_bench import OURS, OURS_2, PEER, PeerBenchRecord
from perf.tuning.tuner import held, rescored

SLA = Sla(10.0)


def point(c: float, thr: float, p99_ms: float) -> analyzer.PerfPoint:
    us = p99_ms * 1e3
    return analyzer.PerfPoint("concurrency", c, thr, us / 2, us, us, us)


def test_a_repeat_that_misses_at_the_operating_load_scores_on_the_loads_below():
    pts = [point(4, 2000, 3.0), point(8, 3000, 8.0), point(12, 3200, 14.0)]
    first = score(pts, SLA)
    assert first.concurrency == 8 and 3000 < first.capacity < 3200        # interpolated toward the miss at 12
    again = rescored(pts, point(8, 3050, 11.0), 8, SLA)                   # the same load, now over the SLA
    assert again.concurrency == 4 and 2000 < again.capacity < 3050        # between 4 (met) and 8 (missed now)
    lost = rescored(pts, None, 8, SLA)                                    # unstable or shed at its load
    assert lost.concurrency == 4 and lost.capacity == 2000                # no interpolation past what was not measured
    same = rescored(pts, point(8, 3000, 8.0), 8, SLA)
    assert same.capacity == pytest.approx(first.capacity)
    assert held([first, again, lost]) is lost and held([first, same]).capacity == pytest.approx(first.capacity)


def test_a_config_that_swings_across_the_sla_ranks_below_one_that_holds():
    """Two configs with the same best measurement: the one whose repeat misses at its load loses."""
    swings = [point(8, 3000, 8.0), point(16, 5000, 9.5), point(24, 5200, 13.0)]
    steady = [point(8, 2900, 5.0), point(16, 4600, 8.0), point(24, 4800, 12.0)]
    a = held([score(swings, SLA), rescored(swings, point(16, 5100, 10.8), 16, SLA)])
    b = held([score(steady, SLA), rescored(steady, point(16, 4650, 8.3), 16, SLA)])
    assert score(swings, SLA).capacity > score(steady, SLA).capacity      # one measurement each: the swinging one
    assert b.capacity > a.capacity                                          # held: the steady one


def test_the_edge_is_interpolated_between_the_score_and_the_next_load_that_missed():
    """Model Analyzer's pick on digits (2026-12-04) met the SLA at c=24 and missed at c=37 by 0.3 ms; ours
    met it at c=44 and missed at c=49: the grid scores say 7713 vs 9328, their edges ~8660 vs ~9365."""
    from perf.tuning.judge import GridPoint, edge_throughput
    theirs = (GridPoint(24, 7713, 7.31), GridPoint(37, 8768, 10.29), GridPoint(44, 9006, 12.85))
    ours = (GridPoint(24, 7096, 5.68), GridPoint(37, 9159, 7.63), GridPoint(44, 9328, 9.26), GridPoint(49, 9373, 10.16))
    assert edge_throughput(theirs, 10.0) == pytest.approx(7713 + (10 - 7.31) / (10.29 - 7.31) * (8768 - 7713))
    assert 9328 < edge_throughput(ours, 10.0) < 9373
    assert edge_throughput(ours[:3], 10.0) == 9328                     # nothing above measured: not extrapolated
    assert edge_throughput((GridPoint(24, 7000, 11.0),), 10.0) == 0.0  # none met
    # an unstable load above (no latency) does not count as the next one
    assert edge_throughput((GridPoint(24, 7713, 7.31), GridPoint(37, 0.0, None)), 10.0) == 7713
    from perf.tuning.judge import DESIGNS, Judged, edge_ratios, grid_score
    sla = Sla(10.0)
    j = Judged(DESIGNS[0], (24, 37, 44, 49), 2, {}, {OURS: [grid_score(list(ours), sla)] * 2,
                                                    PEER: [grid_score(list(theirs), sla)] * 2},
               {f"{OURS} / {PEER}": Interval(1.21, 1.2, 1.22, 2)})
    assert edge_ratios(j, 10.0)[f"{OURS} / {PEER}"].median == pytest.approx(edge_throughput(ours, 10) / 8665, rel=1e-3)


def test_the_judge_scores_the_best_grid_load_that_met_the_sla():
    pts = [GridPoint(4, 2000, 3.0), GridPoint(8, 3900, 10.5), GridPoint(16, 4100, 9.9), GridPoint(24, 0.0, None)]
    s = grid_score(pts, SLA)
    assert (s.throughput, s.concurrency) == (4100, 16)
    assert grid_score([GridPoint(4, 2000, 12.0)], SLA).throughput == 0.0


def test_model_analyzer_starts_tritonserver_with_our_flags(tmp_path):
    """Same server for both tuners: every flag our LocalTriton sets, but those Model Analyzer sets itself
    (repository, ports, model control) and those tied to one server (its id, keys, shm prefix)."""
    ours = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in LocalTriton(tmp_path).command()[1:])
    own = {"model-repository", "http-port", "grpc-port", "metrics-port", "model-control-mode", "id", "backend-config",
           "http-restricted-api", "grpc-restricted-protocol"}
    theirs = peer.server_flags()
    expect = {k: v for k, v in ours.items() if k not in own}
    expect["strict-model-config"] = "true"                  # = --disable-auto-complete-config, which takes no value
    del expect["disable-auto-complete-config"]
    assert theirs == expect


def test_model_analyzer_config_is_yaml_with_the_sla_and_the_space(tmp_path):
    cfg = yaml.safe_load(json.dumps(peer.profile_config(["m_fp32", "m_int8"], tmp_path / "in", tmp_path, Sla(7.5, "p95"),
                                                        2, 32, 64, "inputs.json")))
    assert cfg["run_config_search_mode"] == "brute" and cfg["run_config_search_max_instance_count"] == 2
    assert cfg["run_config_search_max_model_batch_size"] == 32 and cfg["run_config_search_max_concurrency"] == 64
    assert cfg["profile_models"]["m_int8"]["constraints"] == {"perf_latency_p95": {"max": 7.5}}
    assert Path(cfg["perf_analyzer_flags"]["input-data"]).is_absolute()
    ports = {cfg["triton_http_endpoint"], cfg["triton_grpc_endpoint"]}
    assert len(ports) == 2 and all(p.startswith("127.0.0.1:") for p in ports)


CSV = """Model,Batch,Concurrency,Model Config Path,Instance Group,Max Batch Size,Satisfies Constraints,Throughput (infer/sec),p99 Latency (ms)
m_fp32,1,16,m_fp32_config_1,2:CPU,4,Yes,5000.0,7.1
m_fp32,1,32,m_fp32_config_1,2:CPU,4,No,5600.0,12.3
m_fp32,1,16,m_fp32_config_0,1:CPU,8,Yes,4100.0,9.0
m_int8,1,8,m_int8_config_0,1:CPU,2,Yes,3000.0,4.0
m_int8,1,64,m_int8_config_default,1:CPU,8,No,3500.0,40.0
"""
LOG = ("[Model Analyzer] To generate detailed reports for the 2 best m_fp32 configurations, run `model-analyzer report "
       "--report-model-configs m_fp32_config_0,m_fp32_config_1 --export-path /x`\n")


def _configs(out: Path, digits_build) -> None:
    _, repo = digits_build
    base = read_config(repo / "digits_fp32")
    for name, mbs, n in (("m_fp32_config_0", 8, 1), ("m_fp32_config_1", 4, 2), ("m_int8_config_0", 2, 1)):
        cfg = type(base)()
        cfg.CopyFrom(base)
        cfg.name, cfg.max_batch_size = name, mbs
        cfg.instance_group[0].count = n
        cfg.dynamic_batching.Clear()
        cfg.dynamic_batching.SetInParent()
        (out / name).mkdir(parents=True)
        (out / name / "config.pbtxt").write_text(config_text(cfg))


def test_its_pick_is_its_own_ranking_within_the_sla(tmp_path, digits_build):
    """Model Analyzer's order per model (its report line), rows over the SLA left out, the models ordered by
    their first config: here its first fp32 config (4100/s) beats int8's (3000/s)."""
    _configs(tmp_path, digits_build)
    ranked = peer.ranked_configs(CSV, LOG, tmp_path, ["m_fp32", "m_int8"], SLA)
    assert [c.name for c in ranked] == ["m_fp32_config_0", "m_fp32_config_1", "m_int8_config_0"]
    first = ranked[0]
    assert (first.throughput, first.concurrency, first.variant) == (4100.0, 16, "fp32")
    assert first.serving.max_batch_size == 8 and first.serving.dynamic_batching and first.serving.instances == 1
    assert ranked[1].throughput == 5000.0                   # its best row within the SLA, not the 5600/s at 12.3 ms
    with pytest.raises(SlaUnmet, match="relax the SLA"):
        peer.ranked_configs(CSV, LOG, tmp_path, ["m_fp32", "m_int8"], Sla(1.0))


def _summary(agree: bool, run2_over_run1: Interval | None) -> PeerBenchRecord:
    from perf.tuning.judge import DESIGNS, Judged
    ratios = {f"{OURS} / {PEER}": Interval(1.1, 1.0, 1.2, 4)}
    if not agree:
        ratios[f"{OURS_2} / {OURS}"] = run2_over_run1
    judged = [Judged(d, d.loads(40), 4, {}, {}, dict(ratios)) for d in DESIGNS]
    return PeerBenchRecord(model="m", sla_ms=10, percentile="p99", command="c", runs=[], picks_agree=agree,
                           peer=None, judged=judged, measured_share=0.3)   # type: ignore[arg-type]


def test_two_different_picks_are_within_noise_only_when_no_judge_tells_them_apart():
    assert _summary(True, None).within_noise
    assert _summary(False, Interval(1.02, 0.9, 1.1, 4)).within_noise
    assert not _summary(False, Interval(1.2, 1.1, 1.3, 4)).within_noise


def test_a_pick_that_never_met_the_sla_on_the_grid_loses_outright_and_the_rounds_are_kept():
    """A judge whose denominator met the SLA at no grid load in any round has no ratio to give; it must
    not raise (after half an hour of measuring) but say so, and a second run whose pick is that one is
    not within noise of the first."""
    from perf.tuning.judge import DESIGNS, Judged, pair_ratios
    thr = {OURS: [9000.0, 9100.0], PEER: [0.0, 0.0], OURS_2: [8000.0, 8200.0]}
    ratios, unmet = pair_ratios(thr, [(OURS, PEER), (OURS_2, OURS)])
    assert list(ratios) == [f"{OURS_2} / {OURS}"] and list(unmet) == [f"{OURS} / {PEER}"]
    assert "met the SLA at no load in any of the 2 rounds" in unmet[f"{OURS} / {PEER}"]
    judged = [Judged(d, d.loads(40), 2, {}, {}, {}, {f"{OURS_2} / {OURS}": "never met"}) for d in DESIGNS]
    doc = PeerBenchRecord(model="m", sla_ms=10, percentile="p99", command="c", runs=[], picks_agree=False,
                          peer=None, judged=judged, measured_share=0.3)   # type: ignore[arg-type]
    assert not doc.within_noise
    assert doc.ratio_text(judged[0]).startswith(f"no ratio ({PEER} met the SLA at no load")


def test_model_analyzer_searches_for_real_and_its_pick_holds_on_our_server(digits_build, digits_spec, tmp_path):
    """A short real brute search (FP32, one instance, max_batch_size up to 2, concurrency up to 2) on the
    published digits; its pick read back, loaded on our server and measured within the SLA."""
    if not peer.available():
        pytest.skip(f"Model Analyzer not installed at {peer.MODEL_ANALYZER}: run `make setup`")
    _, repo = digits_build
    before = (repo / "digits_fp32" / "config.pbtxt").read_text()
    spec = replace(digits_spec, serving=replace(digits_spec.serving, max_batch_size=2, preferred_batch_sizes=()))
    from perf.measure.inputs import input_data_for
    data = str(input_data_for(spec, tmp_path))
    run = peer.run(repo, spec, ["fp32"], Sla(20.0), tmp_path / "ma", 1, max_concurrency=2, input_data=data,
                   progress=lambda m: None)
    assert (repo / "digits_fp32" / "config.pbtxt").read_text() == before       # it works on its own copy
    start = read_config(tmp_path / "ma" / "input" / "digits_fp32")
    assert not start.HasField("dynamic_batching") and start.instance_group[0].count == 1
    assert run.configs_measured >= 2 and run.measurements >= 2 * run.configs_measured
    pick = run.pick
    assert pick.model == "digits_fp32" and pick.serving.instances == 1 and pick.serving.max_batch_size <= 2
    assert 0 < pick.latency_ms <= 20.0 and pick.throughput > 0
    from perf.measure.sweeps import load_candidate
    with LocalTriton(repo, model_control="explicit") as srv:
        load_candidate(srv.http_url, repo, pick.model, pick.serving)
        again = analyzer.measure(srv.grpc_url, pick.model, "concurrency", pick.concurrency,
                                 analyzer.PerfSettings(measurement_interval_ms=500, input_data=data))
    assert again.p99_us / 1e3 <= 20.0 and again.throughput_infer_per_s > 0.3 * pick.throughput


def test_the_readme_states_every_judge_ratio_and_whether_the_picks_agree(tmp_path):
    """The generated lines come from the committed summary alone: both judges' ratios, the two picks."""
    from build_engines.spec import ServingConfig
    from perf.reports import records
    from perf.tuning.judge import DESIGNS, GridScore, Judged
    from perf.tuning.peer_bench import TunerPick
    s = ServingConfig(max_batch_size=4, preferred_batch_sizes=(), max_queue_delay_us=0, instances=2)
    cfg = peer.PeerConfig("m_fp32_config_3", "m_fp32", s, 5000.0, 16, 8.0)
    run = peer.PeerRun("Model Analyzer 1.58.0", "brute", "fp32; instances 1..2", 700.0, 11, 80, cfg, [cfg])
    picks = [TunerPick("int8, a", "int8", s, 5100.0, 40, [5100.0, 5300.0], 150.0, 11, 40, "ran", 0.08),
             TunerPick("fp32, b", "fp32", s, 5000.0, 44, [5000.0], 160.0, 12, 41, "ran", 0.06)]
    ratios = {f"{OURS} / {PEER}": Interval(1.04, 0.97, 1.1, 4), f"{OURS_2} / {OURS}": Interval(0.99, 0.9, 1.05, 4)}
    judged = [Judged(d, d.loads(40), 4, {}, {OURS: [GridScore(5100.0, 16, ())] * 4}, dict(ratios)) for d in DESIGNS]
    doc = PeerBenchRecord(model="m", sla_ms=10, percentile="p99", command="make bench-peer MODEL=m SLA_MS=10",
                          runs=picks, picks_agree=False, peer=run, judged=judged, measured_share=155 / 700,
                          environment={"cpu": "X", "cores": 2, "int8_isa": "avx2"})
    path = records.record_bench_peer(PeerBenchRecord.from_dict(doc.to_dict()), tmp_path)
    text = "\n".join(records._peer_lines(records.PeerBenchSummary.read(path)))
    assert "picked int8, a, then fp32, b (within noise of each other" in text and "8% and 6%" in text
    assert "11 configs in 700 s" in text and "**22%**" in text and "its pick: fp32, batching mbs 4" in text
    assert "its search" not in text
    # a search that was stopped (it looped, or ran past its timeout) says so in the committed summary
    why = "looped (it proposed measured configs again): stopped after 700 s; tables from its checkpoint"
    cut = records.record_bench_peer(PeerBenchRecord.from_dict(replace(doc, peer=replace(run, stopped=why)).to_dict()),
                                    tmp_path / "stopped")
    said = "\n".join(records._peer_lines(records.PeerBenchSummary.read(cut)))
    assert f"11 configs in 700 s (its search {why}) (the tuner's" in said
    for d in DESIGNS:       # no grid points in these rounds: the edge ratio is left out and said so
        assert f"| {d.name} (c {', '.join(map(str, d.loads(40)))}) | 4 | our pick / Model Analyzer's pick | **1.04x [0.97, 1.10] (interval crosses" in text
        assert "| not recorded |" in text
        assert f"| {d.name} (c {', '.join(map(str, d.loads(40)))}) | 4 | our second run's pick / our pick | **0.99x" in text
    # a pair with no ratio (its denominator never met the SLA on the grid) is said, not dropped
    judged[0] = Judged(DESIGNS[0], DESIGNS[0].loads(40), 4, {}, {}, {f"{OURS_2} / {OURS}": ratios[f"{OURS_2} / {OURS}"]},
                       {f"{OURS} / {PEER}": "never met"})
    doc = replace(doc, judged=judged)
    path = records.record_bench_peer(PeerBenchRecord.from_dict(doc.to_dict()), tmp_path)
    text = "\n".join(records._peer_lines(records.PeerBenchSummary.read(path)))
    assert (f"| {DESIGNS[0].name} (c {', '.join(map(str, DESIGNS[0].loads(40)))}) | 4 | our pick / Model Analyzer's "
            "pick | **no ratio: Model Analyzer's pick met the SLA at no grid load in any round** |") in text


def test_a_repeat_that_misses_where_nothing_below_was_measured_searches_below(digits_spec):
    """A warm start met the SLA at its first load (no lower point); the repeat there misses: the tuner
    measures the loads below instead of scoring the config as holding nothing."""
    from perf.tuning.tuner import Tuner
    t = Tuner("127.0.0.1:1", "127.0.0.1:2", Path("."), digits_spec, sla_ms=10.0)
    asked: list[int] = []

    def at(c: int) -> analyzer.PerfPoint:          # latency 0.25 ms per concurrent request, 11 ms at 37 on the repeat
        asked.append(c)
        return point(c, 200.0 * c, 11.0 if c == 37 else 0.25 * c)
    first_pts = [point(37, 7400, 9.3), point(48, 7900, 12.5)]
    first = score(first_pts, SLA)
    s, runs = t._repeat(at, first_pts, first, [])
    assert asked[0] == 37 and all(c < 37 for c in asked[1:]) and runs == len(asked) > 1
    assert s.meets_sla and s.concurrency < 37 and 0 < s.capacity < first.capacity


def test_a_percentile_model_analyzer_cannot_judge_is_refused_before_anything_is_measured(tmp_path, digits_build):
    from perf.tuning.peer import PeerError
    with pytest.raises(PeerError, match="no p50 latency metric: use --percentile p90 or p95 or p99"):
        peer.check(Sla(10.0, "p50"))
    cfg = peer.profile_config(["m"], tmp_path, tmp_path, Sla(10.0, "p95"), 1, 4, 8, None)
    assert "perf_latency_p95" in cfg["inference_output_fields"]       # its CSV holds p99 alone unless told
    _configs(tmp_path / "out", digits_build)
    with pytest.raises(PeerError, match="no 'p95 Latency \\(ms\\)' column"):
        peer.ranked_configs(CSV, LOG, tmp_path / "out", ["m_fp32"], Sla(10.0, "p95"))


def test_a_search_from_another_machine_is_refused_before_anything_is_measured(tmp_path, digits_spec):
    """--peer-from judges an earlier Model Analyzer search again: its throughputs are that machine's, so
    one made on another CPU (or core count) must not be judged against a tuner run here."""
    from build_engines.runtime import environment
    from build_engines.spec import ServingConfig
    from perf.tuning import peer_bench
    from perf.tuning.peer import PeerConfig, PeerError, PeerRun, PeerRunRecord

    pick = PeerConfig("digits_fp32_config_3", "digits_fp32", ServingConfig(instances=2), 9000.0, 16, 8.0)
    run = PeerRun("Model Analyzer 1.58.0", "brute", "instances 1-2", 1531.0, 30, 120, pick, [pick], ["fp32", "int8"])
    here = environment()
    there = here | {"cpu": "AMD EPYC 9R14", "cores": 2}
    earlier = PeerRunRecord(model="digits", sla_ms=10.0, percentile="p99", run=run, environment=there,
                            path=tmp_path / "peer-run-digits.json")

    def no_server():
        raise AssertionError("nothing may be measured")
    with pytest.raises(PeerError, match="searched on AMD EPYC 9R14 .2 cores.*run without --peer-from"):
        peer_bench.run(no_server, tmp_path, digits_spec, SLA, analyzer.PerfSettings(), tmp_path, earlier=earlier)


def _variant(variant: str, caps: list[float]):
    from build_engines.spec import ServingConfig
    from perf.tuning.tuner import Candidate, Measured
    low = min(caps)
    return Measured(Candidate(variant, ServingConfig(dynamic_batching=False)), "precision", low, 20, 9.0, low, [], 3,
                    capacities=caps)


def test_the_precision_stage_compares_the_repeats_measured_in_turn():
    """The signals bench-peer at 3514e94: run 1 kept FP32 by its lowest of three (2803 vs INT8's 2684,
    each measured before INT8's higher repeats), and every later stage followed FP32. The pick compares
    the means of the repeats, with the final round's bar; FP32 stays on a tie and where INT8 missed."""
    from perf.tuning.tuner import FINAL_GAIN, precision_pick
    fp32, int8 = _variant("fp32", [2803, 3121, 3176]), _variant("int8", [2684, 3475, 3838])
    assert precision_pick([fp32, int8]) is int8
    tie = _variant("int8", [3300, 3121 * FINAL_GAIN * 0.99, 3176 * FINAL_GAIN * 0.99])
    assert precision_pick([fp32, tie]) is fp32
    assert precision_pick([fp32, _variant("int8", [0.0])]) is fp32             # met the SLA at no load
    assert precision_pick([_variant("fp32", [0.0]), int8]) is int8
    # FP32 met the SLA in its search but its held score missed (a repeat at c=1 missed): never kept by its mean
    assert precision_pick([_variant("fp32", [3000.0, 0.0, 3400.0]), _variant("int8", [1500.0, 1600.0, 1650.0])]).variant \
        == "int8"


def test_the_precision_repeats_alternate_so_a_drift_falls_on_both_alike(monkeypatch, digits_spec):
    """Two variants that serve alike on a machine whose throughput climbs 0.5 % a measurement: where each
    one's repeats follow its own search, the later one's means are 4 % higher and crown it; in turn (A B,
    B A) the tie stays FP32 (0.8 %). Each repeat is still scored against its own search's first miss
    (rescored), so the drift does not cancel to nothing: half the block order's at most. A stand-in for
    perf_analyzer: Triton is not needed."""
    import numpy as np
    from perf.tuning import tuner as tuning
    calls: list[tuple[str, int]] = []

    def probe(url, model, settings, missed=None, catch=()):
        def at(c: int) -> analyzer.PerfPoint:
            calls.append((model, c))
            f = 1 + 0.005 * len(calls)                   # the drift: the same config serves more each time
            return point(c, 400.0 * c * f, 0.25 * c / f)
        return at
    monkeypatch.setattr(tuning, "probe", probe)
    monkeypatch.setattr(tuning, "load_candidate", lambda *a, **k: None)
    base = tuning.ServingConfig.from_spec(digits_spec, dynamic_batching=False, instances=1, threads_per_instance=1,
                                          response_cache=False)
    cands = [tuning.Candidate(v, base) for v in ("fp32", "int8")]

    def tuner():
        return tuning.Tuner("127.0.0.1:1", "127.0.0.1:2", Path("."), digits_spec, sla_ms=10.0, progress=lambda _: None)

    def bias(ms) -> float:
        return float(np.mean(tuning.repeated(ms[1])) / np.mean(tuning.repeated(ms[0]))) - 1
    turned = tuner().measure_in_turn(cands, "precision")
    order = [m.rsplit("_", 1)[1] for m, _ in calls]
    assert order[-4:] == ["fp32", "int8", "int8", "fp32"]                    # the repeats, A B then B A
    assert order[:-4] == sorted(order[:-4], key=["fp32", "int8"].index)     # the searches, one then the other
    assert [len(m.capacities) for m in turned] == [3, 3]
    assert tuning.precision_pick(turned) is turned[0]
    calls.clear()
    t = tuner()
    blocks = [t.measure(cands[0], "precision"), t.measure(cands[1], "precision", start=turned[0].concurrency)]
    assert tuning.precision_pick(blocks) is blocks[1]                       # the drift, crowned
    assert 0 <= bias(turned) < bias(blocks) / 2
