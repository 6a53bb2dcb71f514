"""Tests of the benchmark's pure parts: no root, no network, no servers.

Run with ``.venv/bin/pytest bench``. The benchmark itself is checked end to end
by ``bench/run --smoke``.
"""

import argparse
import hashlib
from pathlib import Path

import pytest

from bench import layers, plan, profiling, report
from bench.network import rate_bits_per_s, tbf_arguments
from bench.results import PUSH, RANGES, REFERENCE, STREAM, TREESCALE, Measurement


def test_number_list_takes_ranges_and_items() -> None:
    """``1-3,8`` is 1, 2, 3 and 8, sorted and once each."""
    assert plan.number_list("8,1-3,2") == (1, 2, 3, 8)


def test_number_list_refuses_backward_ranges() -> None:
    """A range that ends before it starts is an error, not an empty list."""
    with pytest.raises(argparse.ArgumentTypeError):
        plan.number_list("4-2")


def test_sizes_are_decimal_megabytes() -> None:
    """``0.5,5`` MB are 500 000 and 5 000 000 bytes."""
    assert plan.size_list("5,0.5") == (500_000, 5_000_000)


def test_smoke_plan_keeps_every_phase_small() -> None:
    """The smoke plan runs every phase, on layers of at most 9 MB, at one rate."""
    smoke, _ = plan.parse(["--smoke"])
    assert smoke.phases == plan.PHASES
    assert max(smoke.layer_sizes()) <= 9 * plan.MB
    assert len(smoke.rates) == 1


def test_trees_cover_comparison_sweep_and_concurrency() -> None:
    """Every relay count some phase needs gets a tree, and only those."""
    chosen, _ = plan.parse(
        ["--relays", "1,3", "--sweep-relays", "5", "--concurrency-relays", "2"]
    )
    assert chosen.trees() == (1, 2, 3, 5)
    assert chosen.pulls_for_tree(2) == ()
    assert chosen.sizes_for_tree(5) == (chosen.sweep_size,)


def test_rates_parse_and_bursts_grow_with_them() -> None:
    """400mbit is 4e8 bit/s; a bucket holds 10 ms at the rate, 64 KiB at least."""
    assert rate_bits_per_s("400mbit") == 4e8
    assert tbf_arguments("10mbit")[4] == str(64 * 1024)
    assert tbf_arguments("400mbit")[4] == str(500_000)
    with pytest.raises(ValueError):
        rate_bits_per_s("fast")


def test_layer_is_a_tar_near_its_size_with_the_right_digest(tmp_path: Path) -> None:
    """A layer is a tar of about the size asked, named by its bytes' digest."""
    layer = layers.make_layer(tmp_path, 300_000, seed=7)
    data = layer.path.read_bytes()
    assert abs(layer.size - 300_000) < 10_240
    assert layer.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert data[257:262] == b"ustar"


def test_parts_cover_the_layer_once_each_with_their_digests(tmp_path: Path) -> None:
    """Ranged parts tile the layer end to end, and each digest is of its bytes."""
    layer = layers.make_layer(tmp_path, 100_000, seed=3)
    data = layer.path.read_bytes()
    parts = layers.split(layer, 3)
    assert [p.start for p in parts] == [0, parts[0].end, parts[1].end]
    assert parts[-1].end == layer.size
    for part in parts:
        digest = hashlib.sha256(data[part.start : part.end]).hexdigest()
        assert part.digest == "sha256:" + digest
    assert parts[0].header == f"bytes=0-{parts[0].end - 1}"


def test_manifest_names_every_layer_and_the_config(tmp_path: Path) -> None:
    """The manifest lists each layer's digest and size and the config's digest."""
    made = [layers.make_layer(tmp_path, 20_000, seed) for seed in (1, 2)]
    config = layers.config_document(made)
    manifest = layers.manifest_document(made, config).decode()
    assert layers.bytes_digest(config) in manifest
    for layer in made:
        assert f'"digest": "{layer.digest}"' in manifest
        assert f'"size": {layer.size}' in manifest


def measurement(
    server: str, method: str, seconds: float, **fields: object
) -> Measurement:
    """A case moving 100 MB in `seconds`, with the fields given."""
    values: dict[str, object] = {
        "phase": "link",
        "rate": "100mbit",
        "relays": 0 if server == REFERENCE else 3,
        "clients": 1,
        "size": 100_000_000,
        "seconds": [seconds],
        "cpu_s": {"reference": 1.0} if server == REFERENCE else {"registry": 2.0},
        "peak_rss_mib": {},
    }
    values.update(fields)
    return Measurement(server=server, method=method, **values)  # type: ignore[arg-type]


def test_throughput_and_cpu_per_gigabyte() -> None:
    """100 MB in 4 s is 25 MB/s; 2 CPU seconds for 0.1 GB is 20 s/GB."""
    case = measurement(TREESCALE, STREAM, 4.0)
    assert case.mb_per_s == 25.0
    assert case.cpu_s_per_gb() == pytest.approx(20.0)


def test_ratios_are_against_the_reference_at_the_same_rate_and_size() -> None:
    """Treescale's line shows its speed over the reference's stream and ranges."""
    cases = [
        measurement(REFERENCE, STREAM, 8.0),
        measurement(REFERENCE, RANGES, 10.0),
        measurement(REFERENCE, STREAM, 2.0, rate="400mbit"),
        measurement(TREESCALE, STREAM, 2.0),
    ]
    text = "\n".join(report.links_section(cases, 4))
    row = next(line for line in text.splitlines() if "treescale, 3 relays" in line)
    assert "| 50.0 | 4.00x | 5.00x |" in row


def test_targets_say_missed_when_below() -> None:
    """A loopback push slower than the reference's is reported as missed."""
    cases = [
        measurement(REFERENCE, PUSH, 1.0, phase="loopback", rate="loopback"),
        measurement(TREESCALE, PUSH, 2.0, phase="loopback", rate="loopback"),
    ]
    lines = report.targets_section(cases)
    assert any("loopback push" in line and "**missed**" in line for line in lines)


def test_collapsed_stacks_sum_by_self_and_inclusive_samples() -> None:
    """Self samples go to a stack's last frame, inclusive ones to each frame once."""
    stacks = profiling.parse_collapsed(
        [
            "run (a/reactor.py:10);write (b/tcp.py:5) 3",
            "run (a/reactor.py:10);hash (c/digests.py:1);hash (c/digests.py:1) 2",
            "not a line",
        ]
    )
    summary = profiling.summarize(stacks, seconds=1.0)
    assert summary.samples == 5
    assert summary.possible == profiling.SAMPLE_RATE
    assert dict(summary.top_self) == {"write (tcp.py)": 3, "hash (digests.py)": 2}
    assert dict(summary.top_total)["run (reactor.py)"] == 5
    assert dict(summary.top_total)["hash (digests.py)"] == 2


def fanout_cases(
    sent_mb: float, pulls: list[float], size: int = 100_000_000
) -> list[Measurement]:
    """A fanout case's lone pull in 10 s (sending 100 MB) and its crowd of pulls."""
    common: dict[str, object] = {
        "phase": "fanout",
        "rate": "100mbit",
        "relays": 3,
        "size": size,
    }
    lone = measurement(TREESCALE, STREAM, 10.0, link_mb=[50.0, 50.0], **common)
    crowd = measurement(
        TREESCALE,
        STREAM,
        max(pulls),
        clients=len(pulls),
        link_mb=[sent_mb / 2, sent_mb / 2],
        pull_seconds=pulls,
        **common,
    )
    return [lone, crowd]


def test_fanout_targets_are_relay_bytes_and_the_slowest_pull() -> None:
    """The relays' bytes are read against the layer, the slowest pull against the
    lone one: 105 MB for a 100 MB layer and 14 s against 10 s meet both."""
    lines = report.targets_section(fanout_cases(105.0, [12.0, 14.0, 13.0]))
    fanout = [line for line in lines if "behind one relay" in line]
    assert len(fanout) == 2
    assert "1.05x the layer" in fanout[0] and fanout[0].endswith(": met")
    assert "1.40x a lone pull" in fanout[1] and fanout[1].endswith(": met")


def test_fanout_targets_say_missed_past_them() -> None:
    """Two layers' worth from the relays, or one pull at twice the lone time,
    misses its target."""
    lines = report.targets_section(fanout_cases(200.0, [12.0, 20.0]))
    fanout = [line for line in lines if "behind one relay" in line]
    assert all(line.endswith("**missed**") for line in fanout)


def test_a_fanout_lone_pull_is_not_taken_for_the_main_target() -> None:
    """The fanout case's lone pull of 3 relays does not stand in for the link
    phase's 3-relay pull against the reference."""
    cases = [
        measurement(REFERENCE, STREAM, 8.0, size=300_000_000),
        *fanout_cases(315.0, [12.0], size=300_000_000),
    ]
    lines = report.targets_section(cases)
    assert not any("3 relays pull 300 MB" in line for line in lines)
