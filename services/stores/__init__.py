"""Where state lives: the user database (SQLAlchemy for writes, the driver for reads)
and Redis (revocations, throttles)."""
