"""The command line, ``python -m icm_core ...``: one module per command, the option checks and the engine options.

* :mod:`.cli` — the parser and the dispatch (user mistakes end in one ``error:`` line);
* :mod:`.options` — the one place where ``--sd/--decoder/--device/--dtype/--autocast/...`` become an engine;
* :mod:`.checks` — option value parsers and the one-line error contract;
* :mod:`.matte`, :mod:`.matte_job`, :mod:`.evaluate`, :mod:`.train`, :mod:`.demo` — the commands.

Only this package (and ``__main__``) prints; everything else logs.
"""
