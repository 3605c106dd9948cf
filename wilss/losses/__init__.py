"""Loss terms, one module per method (DESIGN.md): each term a small pure function on tensors.

``fmwiss``: FMWISS (METHOD.md §5.3-§5.5), ``dkd``: DKD (§3.2). Import the module you need; this package imports nothing.
"""
