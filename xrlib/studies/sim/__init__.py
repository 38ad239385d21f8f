"""Chapter 08: how realistic must the simulation be? A varied "Real" surrogate, matched simulated training
sets (naive / heuristic / realistic), domain randomization, Sim2Real vs Real2Real, the acquisition-shift threat."""
