"""Chapter 12: the worst-case patient pose, found by gradient through the differentiable renderer."""
