"""Text extraction from uploaded or submitted knowledge content (plain text, Markdown, HTML, PDF)."""
