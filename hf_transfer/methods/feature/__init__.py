"""Feature transfer: features computed once by the frozen backbone and cached on disk."""
