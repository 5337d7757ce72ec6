"""The entry points users run, on top of every layer: the ``campaigns`` CLI, the demo and the operator tools
(replay, dead-letter redrive, reading topics). They parse, call the layers below and print; they hold no logic
the stages or the service need."""
