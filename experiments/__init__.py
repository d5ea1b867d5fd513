"""The paper's figures and tables, one module each: ``python -m experiments.NAME`` from the
repository root (``experiments/README.md``); what they share is ``experiments.common``."""
