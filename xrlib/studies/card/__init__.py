"""Chapter 13: the robustness card — every defended model under every threat, in one table."""
