"""Ticket sale, FastAPI style: vacancy (stock) and ticket (purchase)."""
