"""Query language and geo-query parsing into a backend-neutral AST."""
