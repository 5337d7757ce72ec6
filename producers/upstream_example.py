"""An upstream system producing a signed command to ``campaign.commands``: the reference for another team's
producer (any language: the format is in docs/security.md).

    CAMPAIGNS_COMMAND_KEY_ID=ck_... CAMPAIGNS_COMMAND_KEY_SECRET=... \\
        python -m producers.upstream_example PAUSE <campaign id> [--principal NAME]

Creates nothing but the record: the consumer (``campaigns worker``, stage ``commands``) verifies the signature,
takes the principal from the key and applies the command with that principal's permissions. Prints the
command id; a refusal appears on ``campaign.commands.rejected`` (``campaigns rejected list``).
"""

from __future__ import annotations

import argparse
import os
import sys

from campaigns.settings import load_settings
from producers.commands import SigningKey, send_command
from producers.kafka import KafkaProducer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producers.upstream_example", description=__doc__.split("\n")[0])
    parser.add_argument("command_type", choices=["SCHEDULE", "PAUSE", "RESUME", "CANCEL"])
    parser.add_argument("campaign_id")
    parser.add_argument("--principal", help="optional; must be the key's principal if given")
    args = parser.parse_args(argv)
    key_id, secret = os.environ.get("CAMPAIGNS_COMMAND_KEY_ID"), os.environ.get("CAMPAIGNS_COMMAND_KEY_SECRET")
    if not key_id or not secret:
        print("error: set CAMPAIGNS_COMMAND_KEY_ID and CAMPAIGNS_COMMAND_KEY_SECRET (`campaigns command-key create`)",
              file=sys.stderr)
        return 2
    settings = load_settings()
    producer = KafkaProducer(settings.kafka)
    try:
        command = {"command_type": args.command_type, "campaign_id": args.campaign_id}
        if args.principal:
            command["principal"] = args.principal
        print(send_command(producer, settings, command, key=SigningKey(key_id, secret)))
    finally:
        producer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
