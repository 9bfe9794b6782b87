"""The fact ledger (SQLAlchemy 2): facts, edits, checkpoints, sessions; hash chained."""
