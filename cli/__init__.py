"""The click front end: parse, call the library, print."""
