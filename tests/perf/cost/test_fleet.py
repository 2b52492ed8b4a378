"""The fleet spec's checks, the capacity search of a mix, the partitions and the packing's bill."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from build_engines.errors import SpecError
from perf.cost import autoscale
from perf.cost import pricing as cost
from perf.cost.fleet import GroupResult, Pricing, bill_group, group_day, packing_notes, partitions, price, subsets
from perf.cost.fleet_spec import load_fleet
from perf.measure.frontier import Sla
from perf.measure.together import REFINE, Driven, MixCapacity, MixPoint, ModelAt, mix_capacity

GOOD = """name = "house"
rounds = 2

[[model]]
spec = "digits"
requests_per_day = 4e7
sla_ms = 10

[[model]]
spec = "signals"
traffic_trace = "day.txt"
sla_ms = 25
percentile = "p95"
"""


@pytest.fixture()
def fleet_dir(tmp_path: Path) -> Path:
    (tmp_path / "day.txt").write_text("\n".join(str(10 + h) for h in range(24)))
    return tmp_path


def write(d: Path, text: str) -> Path:
    p = d / "fleet.toml"
    p.write_text(text)
    return p


def test_a_good_fleet_spec_reads_every_model_with_its_day(fleet_dir):
    f = load_fleet(write(fleet_dir, GOOD))
    assert [m.name for m in f.members] == ["digits", "signals"] and f.rounds == 2
    digits, signals = f.members
    assert digits.sla == Sla(10, "p99") and signals.sla == Sla(25, "p95")
    assert digits.requests_per_day == pytest.approx(4e7, rel=1e-6)          # the diurnal curve keeps the volume
    assert max(digits.day) / np.mean(digits.day) == pytest.approx(3.0, rel=0.02)
    assert signals.day == tuple(float(10 + h) for h in range(24))            # the trace, relative to the fleet file
    assert "day.txt" in signals.traffic_source


@pytest.mark.parametrize("change, words", [
    (("requests_per_day = 4e7", "requests_per_dya = 4e7"), ["model[0].requests_per_dya", "did you mean 'requests_per_day'"]),
    (("requests_per_day = 4e7", ""), ["model[0]", "one of requests_per_day or traffic_trace"]),
    (("requests_per_day = 4e7", 'requests_per_day = 4e7\ntraffic_trace = "day.txt"'), ["not both or none"]),
    (('percentile = "p95"', 'percentile = "p96"'), ["model[1].percentile", "use one of p50, p90, p95, p99"]),
    (("sla_ms = 10", "sla_ms = 0"), ["model[0].sla_ms", "> 0 ms"]),
    (("sla_ms = 10", "sla_ms = inf"), ["model[0].sla_ms", "finite"]),
    (("requests_per_day = 4e7", "requests_per_day = inf"), ["model[0].requests_per_day", "finite number > 0"]),
    (('name = "house"', 'name = "a b/c"'), ["field 'name'", "letters, digits"]),
    (('name = "house"', 'name = "house"\nprice_per_hour = -1'), ["price_per_hour", "> 0"]),
    (('traffic_trace = "day.txt"', 'traffic_trace = "nope.txt"'), ["model[1].traffic_trace", "nope.txt"]),
    (("sla_ms = 10", 'sla_ms = "fast"'), ["model[0].sla_ms", "must be a number", "'fast'"]),
    (('spec = "signals"', 'spec = "signal"'), ["model[1].spec", "'signal' not found"]),
    (('spec = "signals"', 'spec = "digits"'), ["names digits more than once"]),
    (("rounds = 2", "roundz = 2"), ["'roundz' is unknown", "did you mean 'rounds'"]),
    (("rounds = 2", "rounds = 0"), ["'rounds' must be >= 1"]),
    (("requests_per_day = 4e7", "requests_per_day = 4e7\npeak_to_average = 50"), ["model[0].peak_to_average", "spiky"]),
])
def test_a_bad_fleet_spec_fails_in_one_line_naming_the_key(fleet_dir, change, words):
    old, new = change
    assert old in GOOD
    with pytest.raises(SpecError) as e:
        load_fleet(write(fleet_dir, GOOD.replace(old, new, 1)))
    msg = str(e.value)
    assert "\n" not in msg and str(fleet_dir / "fleet.toml") in msg
    for w in words:
        assert w in msg, msg


def test_more_models_than_every_grouping_can_measure_is_refused(fleet_dir):
    one = '[[model]]\nspec = "{}"\nrequests_per_day = 1e6\nsla_ms = 10\n'
    text = 'name = "big"\n' + "".join(one.format(s) for s in ("digits", "signals", "minilm", "resnet18_bench", "digits"))
    with pytest.raises(SpecError, match="lists 5 models; a fleet spec takes 1 to 4"):
        load_fleet(write(fleet_dir, text))


def test_the_fleet_command_refuses_a_bad_spec_with_exit_2_and_one_line(fleet_dir, capsys):
    from tck.main import main
    p = write(fleet_dir, GOOD.replace("sla_ms = 10", "sla_ms = -1"))
    assert main(["fleet", "--fleet", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model[0].sla_ms" in err[0] and err[0].startswith("fleet: FAILED")


@pytest.mark.parametrize("n, bell", [(1, 1), (2, 2), (3, 5), (4, 15)])
def test_partitions_are_every_split_once(n, bell):
    names = [f"m{i}" for i in range(n)]
    parts = partitions(names)
    assert len(parts) == bell
    keys = {tuple(sorted(tuple(g) for g in p)) for p in parts}
    assert len(keys) == bell                                  # none twice
    for p in parts:
        assert sorted(x for g in p for x in g) == names       # each name in exactly one group
    assert len(subsets(names)) == 2 ** n - 1 and subsets(names)[:n] == [[x] for x in names]


def edge(capacity: float, name: str = "a", blip_at: float | None = None):
    """A mix whose SLA holds up to ``capacity`` req/s (the percentile grows with the load); one miss at
    ``blip_at`` the first time it is measured (a transient the search must not believe)."""
    calls: list[float] = []

    def measure(s: float) -> MixPoint:
        calls.append(s)
        ok = s <= capacity and not (blip_at == s and calls.count(s) == 1)
        return MixPoint(s, [ModelAt(name, s, s, 5.0 * s / capacity, ok, "" if ok else "p99 over")])
    return measure, calls


def search(measure, start: float) -> MixCapacity:
    mix = [Driven("a", "a_fp32", 1.0, Sla(5.0), None)]
    return mix_capacity("", mix, None, start, measure=measure)


@pytest.mark.parametrize("start", [3.0, 40.0, 350.0, 5000.0])
def test_the_mix_search_brackets_the_edge_from_any_start(start):
    measure, calls = edge(400.0)
    c = search(measure, start)
    assert 400.0 / REFINE <= c.capacity_rps <= 400.0          # the highest met, within REFINE below the edge
    assert c.limiting == ["a"] and c.at_capacity().scale_rps == c.capacity_rps
    assert len(calls) <= 14


def test_a_miss_at_the_start_is_measured_again_before_the_search_turns_down():
    measure, calls = edge(400.0, blip_at=100.0)
    c = search(measure, 100.0)
    assert calls[:2] == [100.0, 100.0] and c.capacity_rps >= 400.0 / REFINE


def test_a_mix_that_misses_at_every_load_has_no_capacity():
    measure, _ = edge(0.5)
    c = search(measure, 10.0)
    assert c.capacity_rps == 0.0 and c.limiting == ["a"]


def caps(*values: float, limiting: str = "") -> list[MixCapacity]:
    return [MixCapacity(v, [limiting] if limiting else [], []) for v in values]


def small_fleet(fleet_dir: Path):
    text = ('name = "two"\n[[model]]\nspec = "digits"\nrequests_per_day = 8.64e6\nsla_ms = 10\n'
            '[[model]]\nspec = "signals"\nrequests_per_day = 8.64e6\nsla_ms = 25\n')
    return load_fleet(write(fleet_dir, text))


def pricing_for(labels, usd=0.1):
    inst = cost.Instance("box", usd, 2, 4.0)
    return Pricing({k: inst for k in labels}, 0.2, autoscale.Policy())


def test_bill_of_a_group_sizes_its_peak_and_warm_pool(fleet_dir):
    f = small_fleet(fleet_dir)
    day = group_day(f.members)
    assert day.mean() == pytest.approx(200.0, rel=1e-6)          # 100 + 100 req/s on average
    b = bill_group(["digits", "signals"], day, 300.0, cost.Instance("box", 0.1, 2, 4.0), 0.2, autoscale.Policy())
    assert b.peak_instances == math.ceil(day.max() / (300.0 * 0.8))
    assert 1 <= b.warm_pool <= b.peak_instances
    assert b.monthly_usd == pytest.approx(b.instance_hours_per_day * 0.1 * cost.HOURS_PER_MONTH / 24)


def test_price_packs_when_the_pair_holds_and_keeps_apart_when_it_breaks(fleet_dir):
    f = small_fleet(fleet_dir)
    # each alone: 1000 req/s at its SLA; together they share the cores: 900 req/s of the mix
    groups = {"digits": GroupResult(["digits"], caps(1000, 1040)), "signals": GroupResult(["signals"], caps(1000, 980)),
              "digits + signals": GroupResult(["digits", "signals"], caps(900, 880))}
    bills, best = price(f, groups, pricing_for(groups))
    assert bills[best].groups == [["digits", "signals"]]          # one machine of 900 beats two of 1000 at this load
    solo = next(b for b in bills if len(b.groups) == 2)
    assert all(s > c for s, c in zip(solo.monthly_usd, bills[best].monthly_usd))
    # the pair breaks an SLA at every load in one round: never packed, and the note says keep them apart
    groups["digits + signals"] = GroupResult(["digits", "signals"], caps(900, 0.0, limiting="signals"))
    bills, best = price(f, groups, pricing_for(groups))
    assert bills[best].groups == [["digits"], ["signals"]]
    assert any("signals missed its SLA" in n and "keep them apart" in n for n in packing_notes(f, groups))


def served(name: str, instances: int):
    from build_engines.spec import ServingConfig
    from perf.cost.fleet import Served
    return Served(name, f"{name}_fp32", "fp32", ServingConfig(instances=instances), "test", 0.1, 1e6, 10.0, "p99", "x")


@pytest.mark.parametrize("counts, cores, want", [
    ({"a": 1, "b": 1}, 2, ["as tuned alone"]),                                  # adds up to the cores: nothing to try
    ({"a": 2, "b": 1, "c": 1}, 2, ["as tuned alone", "a 1 instances"]),         # over: only who has more than one gives
    ({"a": 1, "b": 1}, 4, ["as tuned alone", "a 2 instances", "b 2 instances"]),  # under: each may take one more
    ({"a": 1, "b": 1, "c": 1}, 2, ["as tuned alone"]),                          # over, and none can give one up
])
def test_tuning_together_tries_instance_counts_against_the_cores(counts, cores, want):
    from perf.cost.fleet import instance_alternatives
    s = {n: served(n, k) for n, k in counts.items()}
    alts = instance_alternatives(list(counts), s, cores)
    assert list(alts) == want
    for label, cfg in alts.items():
        changed = {n for n in counts if cfg[n].instances != counts[n]}
        assert len(changed) == (0 if label == "as tuned alone" else 1)
