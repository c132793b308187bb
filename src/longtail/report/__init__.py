"""Tables and plots of run and comparison results (layer 2)."""
