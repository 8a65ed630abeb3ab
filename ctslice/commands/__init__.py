"""The command layer's bodies: one module per command, called by the thin Typer functions in ``ctslice.cli``.

A body turns parsed options into library calls, prints what the user reads (tables, summaries, progress
bars from the library's ``on_progress`` callbacks), and chooses the exit code through typed errors. It is
the only code, with ``ctslice.cli`` and ``ctslice.console``, that prints; the library below reports through
return values, callbacks and the ``ctslice`` logger, whose records ``ctslice.console.show_logs`` prints.
"""
