"""Statistics, figures and HTML/Markdown reports, read from the results store.

``reports.build.build_report(store, out)`` is the entry point (``rnnbench report``);
``reports.stats`` holds the statistical functions every number goes through.
"""
