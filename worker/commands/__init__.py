"""The bodies of `qa-worker`'s subcommands, one module each, imported when the command runs."""
