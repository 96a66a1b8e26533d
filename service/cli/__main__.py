"""`python -m service.cli`: the `opsd` command, as torch's launcher starts it in every
process (`torchrun ... -m service.cli train ...`)."""

from service.cli import app

app(prog_name="opsd")
