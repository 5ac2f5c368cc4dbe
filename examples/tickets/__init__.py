"""The ticket sale: vacancy (stock) and ticket (purchase)."""
