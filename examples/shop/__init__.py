"""The shop: gateway, accounts, catalog, orders.  One file per service."""
