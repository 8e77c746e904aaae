"""The native executor's runner: its C source (``runner.c``, ``filter.c``)
and the layout of the two shared pages it talks to the EVM through
(``layout``, from which the C header is generated at build time)."""
