"""What the `shop` command does for each subcommand, apart from parsing its arguments.

`shop.cli` parses the command line and calls in here; every failure a user can cause or meet
(bad settings, a database or Redis that does not answer, a migration that fails, a missing
server) leaves as a `CommandFailed`: one line on stderr and an exit code, never a traceback.
"""
