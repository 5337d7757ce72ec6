"""Writes a customer CSV for ``campaigns import customers`` (the import's size test, docs/import.md).

``python -m bench.customers_csv ROWS FILE.csv [--first N] [--bad-line L]``: ROWS customers with every profile
column and two attribute columns, ``external_id`` ``ext-<n>`` from ``--first`` on; deterministic, written line by
line (constant memory). ``--bad-line L`` makes file line L (the header is line 1) carry an invalid phone number,
to show that one bad row imports nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

HEADER = "external_id,email,phone,whatsapp,first_name,last_name,locale,timezone,status,opted_out_channels,plan,city\n"
FIRST_NAMES = ("Ana", "Bruno", "Chloé", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Inés", "José")
ZONES = ("Europe/Madrid", "America/New_York", "Asia/Tokyo", "UTC")
LOCALES = ("es-ES", "en", "ja", "pt-BR")
PLANS = ("gold", "silver", "bronze")


def line_for(n: int, *, bad: bool = False) -> str:
    phone = "555-BAD" if bad else f"+1555{n:09d}"
    opt_out = "sms;email" if n % 50 == 0 else ""
    return (
        f"ext-{n},user{n}@example.com,{phone},{phone},{FIRST_NAMES[n % 10]},Doe {n},{LOCALES[n % 4]},"
        f'{ZONES[n % 4]},active,{opt_out},{PLANS[n % 3]},"City {n % 100}, Region"\n'
    )


def write(path: str, rows: int, first: int = 1, bad_line: int | None = None) -> None:
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        for index, n in enumerate(range(first, first + rows)):
            out.write(line_for(n, bad=bad_line == index + 2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.customers_csv", description=__doc__.split("\n")[0])
    parser.add_argument("rows", type=int)
    parser.add_argument("file")
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--bad-line", type=int)
    args = parser.parse_args(argv)
    write(args.file, args.rows, args.first, args.bad_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
