"""Reading media files safely: image decoding, isolated decoder processes, embedding files."""
