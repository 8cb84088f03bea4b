"""Host tools for the home firmware (`hems firmware ...`); the device code is in micropython/."""
