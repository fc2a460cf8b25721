"""The serving front: an event loop per worker that reads whole requests before the application sees them."""
