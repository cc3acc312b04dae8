"""Flask glue of the token and login services: the app factory, errors, CORS."""
