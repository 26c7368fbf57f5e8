"""meter: a usage-metering and billing gateway for the Anthropic Messages API."""
