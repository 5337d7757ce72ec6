"""``python -m bench.compare``'s REV+NAME=VALUE arguments."""

from __future__ import annotations

import pytest

from bench.compare import variant


def test_a_revision_alone_has_no_settings() -> None:
    assert variant("HEAD") == ("HEAD", {})


def test_settings_follow_the_revision_and_values_may_hold_equals_and_commas() -> None:
    assert variant("a53f88b+CAMPAIGNS_SENDER__CONSUMERS=2+BENCH_STAGES=scheduler,expander,senders") == (
        "a53f88b", {"CAMPAIGNS_SENDER__CONSUMERS": "2", "BENCH_STAGES": "scheduler,expander,senders"})
    assert variant("HEAD+X=a=b") == ("HEAD", {"X": "a=b"})


@pytest.mark.parametrize("spec", ["HEAD+", "HEAD+NAME", "HEAD+=1"])
def test_a_setting_without_a_name_or_a_value_is_refused(spec: str) -> None:
    with pytest.raises(SystemExit, match="expected REV"):
        variant(spec)
