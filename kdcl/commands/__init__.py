"""One module per `kdcl` command: it parses the command's arguments and calls the layers below. kdcl/cli.py
imports each only when its command runs."""
