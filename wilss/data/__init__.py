"""Data: class lists, tasks and the split rule, readers, label remapping, joint transforms."""
