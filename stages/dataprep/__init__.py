"""Everything that reads, checks, splits and augments images, before any model exists."""
