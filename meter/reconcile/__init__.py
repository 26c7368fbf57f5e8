"""Reconciliation: meter's ledger against the upstream's own account of the same calls.

Anthropic's Usage and Cost Admin API (read with the operator's admin key, METER_UPSTREAM_ADMIN_KEY)
says what the organization used and was charged, per UTC day and model. meter's ledger says what it
recorded and billed its tenants for the same calls. If meter misreads usage, misses rows or prices a
field differently, the two disagree: the drift of a bucket is upstream minus ledger, for each token
kind, web searches and USD. docs/reconciliation.md says what is compared and what is not.

    upstream.py  fetch both reports for a day range (every page), bucketed by (day, model)
    ledger.py    the ledger bucketed the same way, in one query
    report.py    the comparison: buckets, drift, what is over the threshold
    job.py       the background job: one meter process per database reconciles yesterday and today
                 every METER_RECONCILE_INTERVAL_S and exports the drift as metrics
"""
