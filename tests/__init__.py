"""The tests. A package, as is every folder of tests in it, so that pytest imports each module
by its full name (tests.sql.test_chain) from the repository's root, which it puts on sys.path:
two folders may hold modules of the same name, and what tests share is imported from
tests.support by name, never from a conftest or through a sys.path of its own."""
