"""Examples for lightning_film (not part of the installed package).

A regular package (not a namespace one) so ``examples.stdlib_lm.ConditionalByteLM`` names
these files, and not some other ``examples`` directory elsewhere on ``sys.path``, when the
CLI runs from the repository root.
"""
