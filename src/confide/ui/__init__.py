"""``confide ui``: the stakeholders' web page, served on their own machine over :mod:`confide.sdk`
(docs/ui.md)."""
