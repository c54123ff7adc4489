"""The `softcot` subcommands whose step is resolved from params.yaml (each `add_arguments(parser)`
and `run(args)`): the top layer, above the planner. softcot.cli dispatches to them."""
