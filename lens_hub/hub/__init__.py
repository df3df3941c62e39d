"""Hub I/O: verified downloads, name resolution, the Hub mixin, publishing, curating and model cards."""
