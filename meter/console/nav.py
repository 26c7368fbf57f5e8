"""The console's navigation: one entry per top-level page, in the order the header shows them.
A new page is a module in pages/, its controller in router.py's PAGES, and a line here."""

from __future__ import annotations

from typing import NamedTuple


class NavItem(NamedTuple):
    label: str
    href: str


NAV = (
    NavItem("Tenants", "/console/tenants"),
    NavItem("Usage", "/console/usage"),
    NavItem("Prices", "/console/prices"),
    NavItem("Webhooks", "/console/webhooks"),
    NavItem("Audit log", "/console/audit"),
)
