"""Webhooks: events about tenants' money and keys, POSTed to the operator's receivers.

```
worker.py    one task per process running the two below
checker.py   every METER_WEBHOOK_CHECK_S, on every process: what is true now (a budget past 80 %,
             credit low, a key expiring, a batch billed) -> events.emit
events.py    one delivery row per event and webhook, INSERT … ON CONFLICT DO NOTHING on its dedup key:
             however many processes see the same fact, it is emitted once
delivery.py  every METER_WEBHOOK_POLL_S, on every process: claim due deliveries (FOR UPDATE SKIP
             LOCKED, a lease), POST them signed (signing.py), record the outcome, retry on a schedule
```
"""
