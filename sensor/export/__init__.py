"""The rules as other engines' queries: ``xfer-sensor rules export`` (docs/export.md).

``kql``: the hunt as KQL, the one renderer the HTML report and the export share
(no pySigma). ``sources``: the rule and filter files an export reads (no
pySigma). ``targets``: the six targets, built on pySigma and its backends (the
optional extra ``xfer-sensor[sigma]``); only the ``rules export`` command
imports it, never ``replay`` or ``run`` (tests/test_export.py proves it).
"""
