"""The drivers people watch: ``demo`` (the loop on a synthetic market with an accelerated clock) and
``report`` (its self-contained HTML report, Jinja2 templates in ``templates/``). They decide nothing.
"""
