"""The report page, its HTML rendering and every figure the project draws.

``page`` orders the sections of ``sections/`` (one module each) over the shared ``inputs``;
``markdown`` holds the pieces they share and ``html`` turns the page into one self-contained
file. Figures: ``figures`` (the report's), ``previews`` (augmentation), ``contact_sheet``
(leakage), ``gate_figures``, ``tune_figures`` and ``study_figures`` (the pipelines'). Nothing
here imports torch or ultralytics, so the report stage starts without them.
"""
