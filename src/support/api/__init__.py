"""The Litestar driving adapter: controllers, wire structs, problem responses, auth guards."""
