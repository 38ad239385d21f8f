"""Foundation shared by every layer: CT volumes, typed profiles, run folders and device, atomic writes, errors."""
