"""meter: a usage-metering and billing gateway for the Anthropic Messages API."""

__version__ = "0.1.0"
