"""One seeded, resumable, cached training loop; defenses plug in as recipes."""
