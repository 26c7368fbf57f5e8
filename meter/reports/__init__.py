"""What a tenant may read about itself, with its own key, answered by meter from its ledger and
limits, never forwarded: Anthropic's Usage and Cost reports (`usage.py`, `cost.py`, in the shapes of
Anthropic's Admin API, so tools written for those work unchanged) and its limits with their
headroom (`headroom.py`, under `/v1/meter/`, a path Anthropic does not use). `page.py` reads the
reports' shared query parameters; `endpoints.py` holds the handlers the endpoint table names."""
