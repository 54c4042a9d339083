"""The trust core of fleet: keys, signatures, the manifest's canonical byte form and
the verification policy. It imports nothing from ``fleet`` and does no I/O of its own:
bytes in, results out, so it can be read and audited alone."""
