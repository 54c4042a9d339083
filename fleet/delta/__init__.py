"""Delta updates: the host's store of built releases, the deltas between their payloads,
and the choice of when to send one."""
