"""The request path: what happens to one tenant request, stage by stage, one module each.

    routes.py     ASGI front: is the path in the endpoint table? else Litestar (admin, health)
       |
    endpoints.py  the table: method + exact path -> Endpoint (name, billed, handler)
       |
    gateway.py    the pipeline, for every endpoint alike:
       |
       +- auth.py        who calls: tenant key -> Caller (cached per process, NOTIFY-invalidated)
       +- handler.prepare  the endpoint's own step: read the body (request.py), check the fields
       |                 meter relies on, say what goes upstream (messages.py, models.py,
       |                 openai_compat/endpoint.py)
       +- limits.py      reserve the worst case (estimate.py) against limits, budgets, credit
       +- forward.py     send it upstream with the operator's key
       +- relay.py       the answer back to the client, chunk by chunk for streams, while
       |                 stream_usage.py reads the usage from a copy
       +- recorder.py    one ledger row (and the settlement of the reservation) and the metrics

exchange.py holds the Exchange, the record of one request that each stage fills in.
"""
