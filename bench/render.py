"""``python -m bench.render [--n N] [--repeat R] [--json]``: what per-recipient rendering costs the sender's hot path.

A micro-benchmark (timeit-style, no services): for each channel it compiles a typical stored content once, as the
sender does per campaign (``campaigns.core.content.CompiledContent``), then renders it for N different profiles
(names, attributes, one hostile value in ten) and reports the best of ``repeat`` runs in microseconds per message.
The email figure includes the per-recipient unsubscribe token (one HMAC) and URI, as the sender makes them.
Figures depend on the machine and its load: they are indicative, not a target the code enforces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from campaigns.core.content import CompiledContent, list_unsubscribe
from campaigns.core.unsubscribe import make_token

NAMES = ("Ana", "Bruno", "Chloé", "Dmitri", None, "Émile", "Grace", "Hiro", "Inés", "<b>x</b>\r\nBcc: y")
TIERS = ("bronze", "silver", "gold", None)

CONTENTS = {
    "whatsapp": CompiledContent(
        "whatsapp",
        "en",
        None,
        "Hi {{ first_name | default: 'there' }}! As a {{ attributes.tier | default: 'member' | upper }} member you "
        "get 20% off until 31 May.",
        "tiered_offer",
        ["{{ first_name | default: 'there' }}", "{{ attributes.tier | default: 'member' | upper }}", "20%"],
    ),
    "sms": CompiledContent(
        "sms",
        "en",
        None,
        "Hi {{ first_name | default: 'there' }}, your {{ attributes.tier | default: 'member' }} discount: 20% off "
        "everything until 31 May. Reply STOP to opt out.",
        None,
        max_sms_segments=2,
    ),
    "email": CompiledContent(
        "email",
        "en",
        "{{ first_name | default: 'Friend' }}, 20% off is yours",
        '<h1>Spring sale</h1><p>Hello <b>{{ first_name | default: "friend" }}</b>, as a {{ attributes.tier | '
        "default: 'member' }} member you get 20% off everything until 31 May.</p><p>Our new collection is in store "
        'and online. Free delivery on orders over 50 EUR.</p><p><a href="https://shop.example/spring">Shop now</a>'
        '</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
        None,
    ),
}


def profiles(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        tier = TIERS[i % len(TIERS)]
        out.append(
            {
                "customer_id": str(i + 1),
                "first_name": NAMES[i % len(NAMES)],
                "last_name": "Silva",
                "locale": "en",
                "attributes": {"tier": tier} if tier else {"points": i % 1000},
            }
        )
    return out


def measure(run: Callable[[], None], n: int, repeat: int) -> float:
    """Best of ``repeat`` runs, in microseconds per message."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="profiles rendered per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts (default 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    people = profiles(args.n)
    secret, campaign = b"bench-secret", uuid.uuid4()
    figures: dict[str, float] = {}
    for channel, content in CONTENTS.items():
        if channel == "email":

            def run(content: CompiledContent = content) -> None:
                for values in people:
                    token = make_token(secret, int(values["customer_id"]), "email", campaign)
                    values["unsubscribe_url"] = list_unsubscribe("https://u.example/unsubscribe", "u@x", token)[0]
                    content.render(values)
        else:

            def run(content: CompiledContent = content) -> None:
                for values in people:
                    content.render(values)

        figures[channel] = round(measure(run, args.n, args.repeat), 2)
    if args.json:
        print(json.dumps({"us_per_message": figures, "n": args.n, "repeat": args.repeat}))
    else:
        for channel, us in figures.items():
            print(f"{channel:9} {us:8.2f} µs/message (render for one recipient, best of {args.repeat} x {args.n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
