"""Digitally reconstructed radiographs: geometry and pose conventions, physics chains, projector backends, rendering."""


def __getattr__(name):
    """``DifferentiableRenderer`` is imported on first use (it needs torch)."""
    if name in ("DifferentiableRenderer", "RenderOutput"):
        from xrlib.drr import diffrender

        return getattr(diffrender, name)
    raise AttributeError(f"module 'xrlib.drr' has no attribute {name!r}")
