"""Tests of the link rates the status page shows."""

from treescale.web.rates import LinkRates


def test_a_rate_is_the_change_over_the_time_between_samples() -> None:
    rates = LinkRates()
    rates.sample(10.0, {"relay-a": (1000, 0)})
    assert rates.rates() == {}

    rates.sample(12.0, {"relay-a": (5000, 2048)})

    assert rates.rates() == {"relay-a": {"sent": 2000.0, "received": 1024.0}}


def test_a_link_made_again_skips_one_sample_and_a_gone_link_is_dropped() -> None:
    rates = LinkRates()
    rates.sample(0.0, {"a": (100, 100), "b": (0, 0)})
    rates.sample(1.0, {"a": (200, 300), "b": (10, 10)})
    rates.sample(2.0, {"a": (5, 5), "b": (20, 20)})

    assert set(rates.rates()) == {"b"}

    rates.sample(3.0, {"a": (105, 5)})

    assert rates.rates() == {"a": {"sent": 100.0, "received": 0.0}}
