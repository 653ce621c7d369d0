"""Django forms, one module per area."""
