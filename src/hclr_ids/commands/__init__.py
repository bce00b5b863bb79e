"""One module per ``hclr-ids`` subcommand.

Each module defines ``register(subparsers)``, which adds its parser and sets ``handler`` to a
function taking the parsed arguments and returning an exit status. Modules import heavy
libraries inside the handler, so ``hclr-ids --help`` stays fast.
"""
