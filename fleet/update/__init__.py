"""One board's A/B update over SSH (docs/ab-update.md): the host's side of the contract
in DESIGN §3. ``target`` says how to reach a board, ``status`` reads what the on-board
agent reports, ``machine`` runs the update's steps and ``result`` is what it reports."""
