"""A minimal Faust app for the service smoke test: counts events per key in a tumbling window and
publishes each updated count to an output topic. Topic names come from the environment."""

from __future__ import annotations

import os
from datetime import timedelta

import faust

app = faust.App(
    os.environ["SMOKE_APP_ID"],
    broker=os.environ["SMOKE_BROKER"],
    store="memory://",
    topic_partitions=3,
    web_enabled=False,
    datadir=os.environ.get("SMOKE_DATADIR", "/tmp/campaigns-faust-smoke"),
)
source = app.topic(os.environ["SMOKE_IN"], key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["SMOKE_OUT"], key_serializer="raw", value_serializer="raw")
key_to_count = app.Table("key_to_count", default=int, partitions=3).tumbling(
    timedelta(hours=1), expires=timedelta(hours=2)
)


@app.agent(source)
async def count_events(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        key_to_count[event.key] += 1
        await sink.send(key=event.key, value=str(key_to_count[event.key].current()).encode())


if __name__ == "__main__":
    app.main()
