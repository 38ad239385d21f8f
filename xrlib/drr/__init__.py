"""Digitally reconstructed radiographs: geometry and pose conventions, physics chains, projector backends, rendering."""
