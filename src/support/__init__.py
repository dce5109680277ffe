"""support: a self-hostable AI customer-support backend."""
