"""The ultralytics boundary (AGPL-3.0): the only modules that import ultralytics."""
