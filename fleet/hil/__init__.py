"""Hardware-in-the-loop lab: drivers for the power and consoles of real boards."""
