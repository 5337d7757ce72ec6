"""`make demo` in its short configuration: it must end with every campaign terminal and analytics equal to
the recipient log (the demo checks that itself and exits 0 only then)."""

from __future__ import annotations

from rich.console import Console

from campaigns.demo import run_demo


def test_quick_demo_ends_green(settings):
    console = Console(record=True, width=140)
    assert run_demo(settings, quick=True, console=console) == 0
    output = console.export_text()
    assert "demo OK" in output
    assert "paused the sms campaign" in output and "resumed the sms campaign" in output
