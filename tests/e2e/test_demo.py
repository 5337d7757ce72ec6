"""`make demo` in its short configuration: it must end with every campaign terminal and analytics equal to
the recipient log (the demo checks that itself and exits 0 only then), and read well in a CI log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from app.demo import run_demo

RAW_LIBRDKAFKA_LINE = re.compile(r"^%\d\|", re.MULTILINE)  # librdkafka's own stderr format: %4|ts|FAC|...


def test_quick_demo_ends_green(settings):
    console = Console(record=True, width=140)
    assert run_demo(settings, quick=True, console=console) == 0
    output = console.export_text()
    assert "demo OK" in output
    assert "paused the sms campaign" in output and "resumed the sms campaign" in output
    # Delivery receipts came back through the webhook receiver: delivered and read rates per campaign.
    for counter in ("delivered", "read"):  # the first column is WhatsApp's: some delivered and read
        assert re.search(rf"│ {counter} +│ +[1-9]\d* \(\d+%\) │", output), output[-3000:]
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ \(demo-marketer's API token", output), output[:2000]
    # Personalised per recipient: the provider received the seeded customers' own names and tiers.
    from campaigns.db.seed import FIRST_NAMES

    assert "personalised per recipient" in output
    assert re.search(r"template parameters (" + "|".join(FIRST_NAMES) + r"|there) \| 20% \| (bronze|silver|gold)",
                     output), output[-3000:]
    assert re.search(r"subject '(" + "|".join(FIRST_NAMES) + r"|Friend), spring sale: 20% off'", output), output[-3000:]


def _service_env(settings) -> dict[str, str]:
    """The environment a user would export to point `campaigns` at the test's services."""
    db, kafka = settings.database, settings.kafka
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CAMPAIGNS_") and k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update({
        "CAMPAIGNS_DATABASE__HOST": db.host, "CAMPAIGNS_DATABASE__PORT": str(db.port),
        "CAMPAIGNS_DATABASE__USER": db.user, "CAMPAIGNS_DATABASE__PASSWORD": db.password.get_secret_value(),
        "CAMPAIGNS_DATABASE__NAME": db.name,
        "CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CAMPAIGNS_KAFKA__TOPIC_PREFIX": kafka.topic_prefix, "CAMPAIGNS_KAFKA__PARTITIONS": str(kafka.partitions),
        "CAMPAIGNS_METRICS_PORT": "0",
    })
    return env


def test_demo_in_a_pipe_fits_80_columns_and_librdkafka_logs_through_logging(settings):
    """`campaigns demo --quick | tee log`, as CI runs it: stdout is a pipe, so every line fits 80 columns,
    no heading is cut (`chan…`), and librdkafka never prints its raw `%N|...` lines on either stream."""
    campaigns = Path(sys.executable).with_name("campaigns")
    done = subprocess.run([str(campaigns), "demo", "--quick"], env=_service_env(settings), capture_output=True,
                          text=True, timeout=240)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{err[-3000:]}"
    assert "demo OK" in out
    too_wide = [line for line in out.splitlines() if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)
    for heading in ("status", "recipients", "sent", "failed", "skipped", "cancelled", "analytics = log", "delivered",
                    "read", "bounced",
                    "whatsapp", "email", "accepted"):
        assert heading in out, heading
    assert "…┃" not in out and "… ┃" not in out, "a heading was truncated"
    assert not RAW_LIBRDKAFKA_LINE.search(out) and not RAW_LIBRDKAFKA_LINE.search(err), err[-3000:]
