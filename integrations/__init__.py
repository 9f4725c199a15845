"""Runnable applications that wire aligner-chains into real systems (each with a README and a smoke test)."""
