"""The FastAPI service: loads every checkpoint at startup and serves one router per capability."""
