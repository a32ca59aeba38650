"""Every approach the workbench compares, behind one interface (:class:`~workbench.methods.base.Method`)."""

from .base import Intervention, Method, PreparedBatch

__all__ = ["Intervention", "Method", "PreparedBatch"]
