"""The report page, its HTML rendering and every figure the pipeline draws."""
