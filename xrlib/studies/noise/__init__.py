"""Chapter 10: quantum noise as a threat — expected signals, SAR/CMR, insertion validation, repeated trainings."""
