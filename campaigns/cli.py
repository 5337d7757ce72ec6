"""The ``campaigns`` command line.

Exit codes: 0 ok, 1 unexpected failure, 2 invalid input, 3 permission denied, 4 not found or transition
not allowed, 5 a service (Kafka, PostgreSQL) unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from campaigns.errors import (
    CampaignError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    TransitionNotAllowed,
    ValidationError,
)

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_DENIED, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5

Handler = Callable[[argparse.Namespace], int]


def exit_code_for(error: CampaignError) -> int:
    if isinstance(error, ValidationError):
        return EXIT_INVALID
    if isinstance(error, PermissionDenied):
        return EXIT_DENIED
    if isinstance(error, NotFound | TransitionNotAllowed):
        return EXIT_NOT_FOUND
    if isinstance(error, ServiceUnavailable):
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


def cmd_migrate(args: argparse.Namespace) -> int:
    from campaigns.db.engine import downgrade, upgrade
    from campaigns.settings import load_settings

    db = load_settings().database
    if args.downgrade:
        downgrade(db, args.revision or "base")
    else:
        upgrade(db, args.revision or "head")
    print(f"database {db.name} at {db.host}:{db.port} migrated", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaigns", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    migrate = sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    migrate.add_argument("--revision", help="target revision (default head, or base with --downgrade)")
    migrate.add_argument("--downgrade", action="store_true", help="downgrade instead of upgrade")
    migrate.set_defaults(handler=cmd_migrate)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CampaignError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
