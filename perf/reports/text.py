"""`make perf MODEL=minilm`: the text ensemble (strings in) swept by sequence length, FP32 vs INT8,
the semantic cache's hit and false-hit rates by threshold, and the cost per 1M requests."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


SEQ_LENGTHS = (16, 64, 128)
RATIO_LOAD = 4          # the concurrency INT8/FP32 is compared at (the ensembles saturate one core by then)
THRESHOLDS = (0.5, 0.55, 0.6, 0.7, 0.8, 0.9)
QUERIES = Path(__file__).resolve().parents[2] / "build_engines" / "examples" / "data" / "semantic_cache_queries.json"


def text_of_tokens(n: int) -> str:
    """A natural-language text that tokenizes to exactly n tokens including [CLS] and [SEP]."""
    from build_engines.examples import minilm
    words = " ".join(minilm.sentences("minilm_eval.txt")).split()
    tok = minilm.tokenizer()
    lo, hi = 1, len(words)
    while lo < hi:                                       # the longest word prefix within n tokens
        mid = (lo + hi + 1) // 2
        if len(tok.encode(" ".join(words[:mid])).ids) <= n:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    while len(tok.encode(text).ids) < n:
        text += " a"
    return text


def input_data(path: Path, n_tokens: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [{"TEXT": {"content": [text_of_tokens(n_tokens)], "shape": [1]}}]}))
    return path


def semantic_cache_eval(url: str, model: str, thresholds=THRESHOLDS, seed: int = 0) -> list[dict]:
    """Replay a query stream with paraphrases; a hit is false when its answer is not the query's own."""
    from clients.semantic_cache import SemanticCache, TritonEmbedder
    doc = json.loads(QUERIES.read_text())
    stream = [(q, g["answer"]) for g in doc["groups"] for q in g["queries"]] + [(d["query"], d["answer"]) for d in doc["distinct"]]
    rng = np.random.default_rng(seed)
    stream = [stream[i] for i in rng.permutation(len(stream))]
    emb = TritonEmbedder(url, model)
    vecs = {q: v for q, v in zip([q for q, _ in stream], emb([q for q, _ in stream]))}
    emb.close()
    rows = []
    for th in thresholds:
        cache = SemanticCache(lambda texts: np.stack([vecs[t] for t in texts]), threshold=th)
        false_hits = 0
        for q, answer in stream:
            r = cache.get_or_compute(q, lambda _q, a=answer: a)
            false_hits += int(r.hit and r.answer != answer)
        exact_repeatable = len(stream) - len(doc["groups"]) - len(doc["distinct"])
        rows.append({"threshold": th, "queries": len(stream), "hits": cache.hits, "hit_rate": cache.hit_rate,
                     "false_hits": false_hits, "false_hit_rate": false_hits / len(stream),
                     "false_share_of_hits": false_hits / cache.hits if cache.hits else 0.0,
                     "max_possible_hits": exact_repeatable})
    return rows


def check_text_data(path: Path) -> None:
    """Your texts for the ensemble: perf_analyzer's JSON, each request a TEXT string (BYTES, shape [1])."""
    from perf.errors import BadSettings
    try:
        doc = json.loads(Path(path).read_text())
        rows = doc["data"]
        ok = bool(rows) and all(isinstance(r, dict) and "TEXT" in r for r in rows)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadSettings(f"--input-data {path}: not perf_analyzer JSON ({e}); write "
                          '{"data": [{"TEXT": {"content": ["your text"], "shape": [1]}}, ...]}') from e
    if not ok:
        raise BadSettings(f"--input-data {path}: every entry of \"data\" needs the ensemble's one input, TEXT: "
                          '{"data": [{"TEXT": {"content": ["your text"], "shape": [1]}}, ...]}')


def text_replicates(srv, run_id: str, by_length: dict, rounds: int, progress: Callable[[str], None],
                    results_dir: Path | None = None) -> Path:
    """FP32 and INT8 ensembles on each input series ("16 tokens", ..., "your data"), in turn for
    ``rounds`` rounds: INT8/FP32 per series as the median of the rounds' ratios with its interval."""
    from perf.measure import analyzer
    from perf.measure.replicates import ratio
    from perf.measure.results import ReplicatesRecord, save
    thr: dict[str, list[float]] = {f"{v} {n}": [] for n in by_length for v in ("fp32", "int8")}
    for r in range(rounds):
        for n, s in by_length.items():
            for v in ("fp32", "int8"):
                p = analyzer.measure(srv.grpc_url, f"minilm_text_{v}", "concurrency", RATIO_LOAD, s)
                thr[f"{v} {n}"].append(p.throughput_infer_per_s)
        progress(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {x[-1]:.0f}" for k, x in thr.items()))
    s0 = next(iter(by_length.values()))
    rec = ReplicatesRecord(model="minilm", run_id=run_id, mode="concurrency", load=RATIO_LOAD,
                           window_ms=s0.measurement_interval_ms,
                           inputs="; ".join(f"{n}: {Path(x.input_data).name}" for n, x in by_length.items()),
                           throughput=thr, ratios={f"served INT8/FP32, {n}": ratio(thr, f"int8 {n}", f"fp32 {n}")
                                                   for n in by_length})
    return save(rec, results_dir, name=f"minilm-{run_id}")


def perf_minilm(repository: Path, build_dir: Path, settings, loads: Sequence[float],
                progress: Callable[[str], None] = print, instance: str | None = None,
                price_per_hour: float | None = None, rounds: int = 5, user_data: Path | None = None) -> Path:
    """`make perf MODEL=minilm`: the text ensemble by sequence length (texts of exactly 16, 64, 128
    tokens) and, given ``user_data`` (perf_analyzer JSON with a TEXT input), on your texts too; and the
    semantic cache. Returns the report."""
    from build_engines.pipeline import ensure_published
    from build_engines.spec import load_spec
    from clients import LocalTriton
    from perf.measure import analyzer
    from perf.measure.results import SemanticCacheRecord, SweepRecord, save
    from perf.measure.sweeps import new_run_id, server_info

    _say = progress
    if user_data is not None:
        check_text_data(user_data)
    spec = load_spec("minilm")
    ensure_published("minilm", repository, build_dir, precisions=("fp32", "int8"), progress=progress)
    run_id = new_run_id()
    s = settings
    loads = [x for x in loads if x <= 8]
    from perf.measure.results import RESULTS_DIR
    work = RESULTS_DIR / "work"
    work.mkdir(parents=True, exist_ok=True)
    sla_ms = float(spec.extra.get("sla_ms", 100.0))
    t0 = time.perf_counter()
    models = ["minilm_tokenizer", "minilm_fp32", "minilm_int8", "minilm_text_fp32", "minilm_text_int8"]
    with LocalTriton(repository, model_control="explicit", load=models) as srv:
        _say(f"local Triton {srv.http_url}")
        info = server_info(srv.http_url)
        series = {f"{n} tokens": (n, replace(s, input_data=str(input_data(work / f"text_{n}.json", n))))
                  for n in SEQ_LENGTHS}
        if user_data is not None:
            series["your data"] = (None, replace(s, input_data=str(user_data)))
        for name, (n, settings) in series.items():
            for v in ("fp32", "int8"):
                model = f"minilm_text_{v}"
                _say(f"{v}, {name}:")
                pts = analyzer.sweep(srv.grpc_url, model, "concurrency", loads, settings,
                                     progress=lambda p: _say(f"  c={p.load:g}: {p.throughput_infer_per_s:.0f}/s p99 {p.p99_us / 1e3:.1f} ms"))
                save(SweepRecord(model=model, variant=v, label=f"{v} {name}", run_id=run_id, mode="concurrency",
                                 seq_tokens=n, serving=spec.serving, config=analyzer.check_target(srv.grpc_url, model), server=info,
                                 client={**asdict(settings), "tool": "perf_analyzer", "url": srv.grpc_url},
                                 points=list(pts)), name=f"{model}-{name.replace(' ', '-')}")
        _say(f"INT8/FP32 by input: {rounds} interleaved rounds at concurrency {RATIO_LOAD}:")
        text_replicates(srv, run_id, {name: x for name, (_, x) in series.items()}, rounds, _say)
        cache_rows = semantic_cache_eval(srv.http_url, "minilm_text_int8")
        memory_gib = srv.rss_gib() + 1.0          # the served models after the loads, + 1 GiB for the OS
    save(SemanticCacheRecord(model="minilm_text_int8", run_id=run_id, rows=cache_rows, queries_file=QUERIES.name),
         name="minilm")
    for r in cache_rows:
        _say(f"threshold {r['threshold']}: hit rate {r['hit_rate']:.1%}, false hits {r['false_hit_rate']:.1%} of queries")
    out = text_report(run_id, sla_ms, instance=instance, price_per_hour=price_per_hour, memory_gib=memory_gib)
    _say(f"perf: PASSED in {time.perf_counter() - t0:.0f} s; report {out}")
    return out


def cost_rows(sweeps: list, sla_ms: float, inst, replicates=None) -> list[str]:
    """Markdown rows: best throughput within the SLA per sequence length, FP32 vs INT8, and USD per 1M;
    INT8/FP32 from the interleaved rounds (``replicates``), never from the two single sweeps."""
    from perf.cost import pricing as cost
    head = f"INT8/FP32 (interleaved, c={replicates.load:g})" if replicates else "INT8/FP32"
    lines = [f"| input | FP32 best req/s (p99 <= {sla_ms:g} ms) | INT8 best req/s | {head} | FP32 USD/1M | INT8 USD/1M "
             "| files |", "| --- | --- | --- | --- | --- | --- | --- |"]
    def series(s) -> str:                 # "fp32 16 tokens" -> "16 tokens"
        return s.label.split(" ", 1)[1]
    order = {series(s): (s.seq_tokens is None, s.seq_tokens or 0) for s in sweeps}
    for n in sorted(order, key=order.get):
        best = {}
        for s in sweeps:
            if series(s) == n:
                ok = [p.throughput_infer_per_s for p in s.points if p.p99_us / 1e3 <= sla_ms]
                best[s.variant] = (max(ok) if ok else 0.0, s.path.name)
        f32, i8 = best.get("fp32", (0, ""))[0], best.get("int8", (0, ""))[0]
        usd = lambda r: f"{cost.cost_per_million(inst.usd_per_hour, r):.3f}" if r > 0 else "SLA missed"  # noqa: E731
        iv = replicates.ratios.get(f"served INT8/FP32, {n}") if replicates else None
        ratio = iv.text() if iv else "not stated (no interleaved rounds)"
        lines.append(f"| {n} | {f32:.1f} | {i8:.1f} | {ratio} | {usd(f32)} | {usd(i8)} | "
                     f"{best.get('fp32', ('', ''))[1]}, {best.get('int8', ('', ''))[1]} |")
    return lines


def text_report(run_id: str, sla_ms: float, results_dir: Path | None = None, instance: str | None = None,
                price_per_hour: float | None = None, memory_gib: float | None = None) -> Path:
    from perf.cost import pricing as cost
    from perf.reports.plots import plot_sweeps
    from perf.measure.results import RESULTS_DIR, ReplicatesRecord, SemanticCacheRecord, SweepRecord, latest, load_all
    rd = Path(results_dir or RESULTS_DIR)
    reps = latest(load_all(ReplicatesRecord, rd, model="minilm", run_id=run_id))
    sweeps = sorted(load_all(SweepRecord, rd, run_id=run_id), key=lambda s: (s.seq_tokens or 0, s.variant))
    cache = load_all(SemanticCacheRecord, rd, run_id=run_id)
    out_dir = rd / "report"
    tput, lat = plot_sweeps(sweeps, out_dir / "perf-minilm.png", "minilm ensemble")
    cat = cost.load_catalog()
    inst, why = cat.this_machine(instance, price_per_hour, memory_gib=memory_gib)
    lines = ["# perf: all-MiniLM-L6-v2 ensemble (strings in, embeddings out)", "",
             f"Run {run_id}. Server {sweeps[0].server['version']}; machine {sweeps[0].environment['cpu']}, "
             f"{sweeps[0].environment['cores']} cores; perf_analyzer, concurrency sweeps, one text per request.", "",
             f"![throughput vs p99]({tput.name})", "", "## INT8 / FP32 by sequence length", ""] + cost_rows(sweeps, sla_ms, inst, reps)
    lines += ["", f"Cost: this machine priced as `{inst.name}` ({why}; {inst.usd_per_hour} USD/h, {cat.source}, read "
              f"{cat.prices_read}).", ""]
    if cache:
        lines += ["## Semantic cache (served INT8 encoder, paraphrase stream)", "",
                  "| threshold | hit rate | false hits (of queries) | false share of hits |", "| --- | --- | --- | --- |"]
        for r in cache[-1].rows:
            lines.append(f"| {r['threshold']} | {r['hit_rate']:.1%} ({r['hits']}/{r['queries']}, max {r['max_possible_hits']}) | "
                         f"{r['false_hit_rate']:.1%} | {r['false_share_of_hits']:.1%} |")
        lines += ["", f"Source: `{cache[-1].path.name}`."]
    out = out_dir / "perf-minilm.md"
    out.write_text("\n".join(lines) + "\n")
    return out
