"""What a person sees: plotly figures (``plots``), the steering panel (``widgets``), figure/table export
(``export``) and running notebooks headless (``notebooks``).

Builds on :mod:`workbench.analysis` and below.
"""
