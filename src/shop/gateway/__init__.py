"""The API gateway: request ids, problem details, JWT auth, rate limiting, routing."""
