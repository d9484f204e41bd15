"""The five bounded contexts. Each is a package whose `module` attribute is its descriptor."""
