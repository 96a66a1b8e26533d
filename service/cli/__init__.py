"""The `opsd` command line (`app`): the commands of service/cli/main.py and the modules it
registers, `server` (the service's processes), `client` (commands over the HTTP API),
`watch` (following a run) and `demo`, with what they share in `common`."""

from service.cli.main import app

__all__ = ["app"]
