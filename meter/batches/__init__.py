"""Message Batches through meter: owned per tenant, reserved at their worst case, billed exactly once.

scan.py       the creation body, request by request, from its spool file
store.py      the `batches` table: who owns which batch, its last-seen object, its hold
endpoints.py  the handlers of the endpoint table's batch entries
billing.py    the background worker that bills each ended batch's results, once
"""
