"""The apps of the CORS browser test: a page on one origin, an API on another."""
