"""Console commands. They use the library; the library never imports them."""
