"""Aggregate table (:mod:`.table`) and figures (:mod:`.plots`)."""
