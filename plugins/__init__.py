"""lmconv's built-in plugins, registered through the ``lmconv`` entry-point group like any other."""
